"""tfcap.features.pooling: ROI crop-and-resize averages, batching, backbones."""

import fake_hub
import numpy as np
import pytest
import tensorflow as tf

from tfcap.features import pooling


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    return fake_hub.build_models(tmp_path_factory.getbasetemp() / "fake_hub")


def ramp(height, width, channels=2):
    """float32 `[height, width, channels]`: channel 0 = x, channel 1 = y (pixel indices)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack([x, y] + [np.ones_like(x)] * (channels - 2), -1)


def test_constant_map_gives_the_constant():
    feats = pool_one(np.full((6, 9, 3), 2.5, np.float32), [[0.1, 0.2, 0.7, 0.9], [0, 0, 1, 1]])
    np.testing.assert_allclose(feats, 2.5, rtol=1e-6)


def pool_one(feature_map, boxes, pool_size=7):
    (out,) = pooling.pool_regions([feature_map], [np.asarray(boxes, np.float32)], pool_size)
    return out


def test_box_mean_by_hand():
    # On a ramp, a box's mean is the ramp at the box centre: x in [0, 9] and y in [0, 5] pixels.
    feats = pool_one(
        ramp(6, 10), [[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.2], [0.5, 0.6, 0.7, 1.0]]
    )
    np.testing.assert_allclose(feats[0], [4.5, 2.5], atol=1e-5)
    np.testing.assert_allclose(feats[1], [0.25 * 9, 0.1 * 5], atol=1e-5)
    np.testing.assert_allclose(feats[2], [0.6 * 9, 0.8 * 5], atol=1e-5)


def test_batch_of_different_sizes_equals_one_by_one():
    rng = np.random.default_rng(0)
    maps = [rng.normal(size=s).astype(np.float32) for s in ((5, 7, 4), (9, 3, 4), (1, 1, 4))]
    boxes = [rng.random((n, 2)) for n in (3, 1, 2)]
    boxes = [np.concatenate([b * 0.5, b * 0.5 + 0.4], 1).astype(np.float32) for b in boxes]
    together = pooling.pool_regions(maps, boxes, 5)
    for a, b in zip(together, pooling.pool_regions(maps, boxes, 5, chunk=2), strict=True):
        np.testing.assert_array_equal(a, b)  # chunking changes nothing
    for m, b, t in zip(maps, boxes, together, strict=True):
        assert t.shape == (len(b), 4) and t.dtype == np.float32
        np.testing.assert_allclose(t, pool_one(m, b, 5), atol=1e-5)
    np.testing.assert_allclose(together[2], np.repeat(maps[2][0], 2, axis=0), atol=1e-6)


def test_pool_regions_checks_its_inputs():
    assert pooling.pool_regions([], []) == []
    with pytest.raises(ValueError, match="2 feature maps but 1"):
        pooling.pool_regions([ramp(2, 2)] * 2, [np.zeros((1, 4))])
    with pytest.raises(ValueError, match=r"\[h, w, channels\]"):
        pooling.pool_regions([np.zeros((2, 2))], [np.zeros((1, 4))])


@pytest.mark.parametrize(
    "size, expected", [((480, 640), (600, 800)), ((100, 1000), (100, 1000)), ((7, 7), (600, 600))]
)
def test_resized_shape(size, expected):
    assert tuple(pooling.resized_shape(*size, 600, 1000).numpy()) == expected


def test_hub_backbone_feature_map(models):
    backbone = pooling.Backbone(models["backbone"], min_side=64, max_side=128)
    image = np.random.default_rng(0).integers(0, 256, (90, 200, 3), np.uint8)
    fmap = backbone(image)  # resized to 58 x 128, then / 8
    assert fmap.shape == (8, 16, 16) and fmap.dtype == tf.float32
    graph = tf.function(backbone)(tf.constant(image))
    np.testing.assert_allclose(graph, fmap, atol=1e-6)


def test_keras_application_from_a_local_weights_file(tmp_path):
    import keras

    path = str(tmp_path / "mobilenet_notop.weights.h5")
    built = keras.applications.MobileNetV3Small(
        include_top=False, weights=None, input_shape=(None, None, 3)
    )
    built.save_weights(path)
    backbone = pooling.Backbone(app="MobileNetV3Small", weights=path, min_side=64, max_side=96)
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), np.uint8)
    fmap = backbone(image)
    assert fmap.shape == (2, 3, 576)
    expected = built(tf.cast(image[None], tf.float32), training=False)[0]
    np.testing.assert_allclose(fmap, expected, atol=1e-4)  # the saved weights, not new ones
    with pytest.raises(ValueError, match="local weights file"):
        pooling.Backbone(app="MobileNetV3Small")
    with pytest.raises(ValueError, match="no model 'NoSuchNet'"):
        pooling.Backbone(app="NoSuchNet", weights=path)
    with pytest.raises(ValueError, match="exactly one"):
        pooling.Backbone()


class PooledVector(tf.Module):
    """A TF Hub image feature_vector model: float [0, 1] in, pooled `[1, channels]` out."""

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)])
    def __call__(self, images):
        return tf.reduce_mean(tf.nn.avg_pool2d(images, 8, 8, "SAME"), axis=[1, 2])


class Tf1ImageModule(tf.Module):
    """A TF1 Hub image module's `image_feature_vector` signature: pooled `default` plus
    intermediate maps (two here, so one must be named)."""

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32, name="images")])
    def vector(self, images):
        block3 = tf.nn.avg_pool2d(images, 4, 4, "SAME")
        block4 = tf.nn.avg_pool2d(images, 8, 8, "SAME") * 2.0
        return {"default": tf.reduce_mean(block4, [1, 2]), "block3": block3, "block4": block4}


@pytest.mark.bad_input("feature extraction")
def test_pooled_feature_vectors_are_refused_and_named_spatial_outputs_used(tmp_path):
    tf.saved_model.save(PooledVector(), str(tmp_path / "vector"))
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), np.uint8)
    with pytest.raises(
        ValueError, match=r"vector: gives a pooled feature vector .*--backbone_output"
    ):
        pooling.Backbone(str(tmp_path / "vector"), min_side=64, max_side=96)(image)
    module = Tf1ImageModule()
    path = str(tmp_path / "tf1")
    tf.saved_model.save(module, path, signatures={"image_feature_vector": module.vector})
    with pytest.raises(ValueError, match=r"several spatial outputs \['block3', 'block4'\]"):
        pooling.Backbone(path, min_side=64, max_side=96)(image)
    with pytest.raises(ValueError, match="no output 'block5'"):
        pooling.Backbone(path, min_side=64, max_side=96, output="block5")(image)
    with pytest.raises(ValueError, match="no signature 'serve'"):
        pooling.Backbone(path, signature="serve")
    fmap = pooling.Backbone(path, min_side=64, max_side=96, output="block4")(image)
    expected = tf.nn.avg_pool2d(tf.constant(image[None], tf.float32) / 255.0, 8, 8, "SAME") * 2
    np.testing.assert_allclose(fmap, expected[0], atol=1e-5)  # [0, 1] input, the named map


def test_keras_resnet_saved_as_a_handle_gets_the_same_features_with_caffe(tmp_path):
    import keras

    weights = str(tmp_path / "resnet50_notop.weights.h5")
    built = keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(None, None, 3)
    )
    built.save_weights(weights)
    built.export(str(tmp_path / "resnet50_savedmodel"), verbose=False)  # a TF SavedModel
    image = np.random.default_rng(0).integers(0, 256, (64, 80, 3), np.uint8)
    app = pooling.Backbone(app="ResNet50", weights=weights, min_side=64, max_side=96)
    assert app.preprocessing == "caffe"  # ResNet50's own preprocess_input
    want = app(image)
    handle = str(tmp_path / "resnet50_savedmodel")
    caffe = pooling.Backbone(handle, min_side=64, max_side=96, preprocessing="caffe")
    np.testing.assert_allclose(caffe(image), want, rtol=1e-4, atol=1e-4)
    unit = pooling.Backbone(handle, min_side=64, max_side=96)  # a handle defaults to [0, 1]
    assert unit.preprocessing == "unit" and not np.allclose(unit(image), want, atol=1e-2)


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch"])
def test_preprocessing_modes_are_keras_applications(mode):
    from keras.applications import imagenet_utils

    x = np.random.default_rng(0).uniform(0, 255, (1, 4, 5, 3)).astype(np.float32)
    want = imagenet_utils.preprocess_input(x.copy(), mode=mode)
    np.testing.assert_allclose(pooling.preprocess(tf.constant(x), mode), want, rtol=1e-6)
    with pytest.raises(ValueError, match="must be one of"):
        pooling.Backbone(app="ResNet50", weights="w.h5", preprocessing="bgr")
