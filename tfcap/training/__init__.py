"""Training: cross-entropy (xe), self-critical (scst) and adversarial (gan) phases.

Read in this order: `loop` (the loop of one phase), `phases` (what each phase
is: optimizer, step function, what it leaves when it ends), then the updates
they wrap (`xe`, `scst`, `gan`, `discriminator_step`, sharing `updates`), and
the services the loop calls: `state` (directories, checkpoints, counters),
`input` (batches from a step on), `logs`, `validation`, `guard` (NaN/Inf).
`tfcap.train` builds these from flags and runs the phases in order.
"""
