"""Learn from your own numpy arrays, one sample at a time, as a sensor stream would arrive.

    python examples/own_arrays_one_at_a_time.py

The arrays here are made up (three kinds of 32-value sensor readings, a fourth appearing
later); replace them with yours: any float array of shape (N, D), (N, H, W) or (N, C, H, W)
and integer labels 0..n_classes-1.
"""

import numpy as np

from edgecl import Learner

rng = np.random.default_rng(0)
centres = rng.normal(size=(4, 32)).astype(np.float32)


def readings(label: int, n: int) -> np.ndarray:
    return (centres[label] + 0.6 * rng.normal(size=(n, 32))).astype(np.float32)


learner = Learner(strategy="latent-replay", input_shape=(32,), n_classes=4, seed=0)

# A short warm-up batch of the classes known at deployment pretrains the backbone.
warm_x = np.concatenate([readings(c, 50) for c in (0, 1, 2)])
warm_y = np.repeat([0, 1, 2], 50)
learner.learn_many(warm_x, warm_y)

# Then the stream: one reading at a time, and class 3 starts to appear halfway through.
correct = 0
stream_labels = np.concatenate([rng.integers(0, 3, 200), rng.integers(0, 4, 200)])
for label in stream_labels:
    x = readings(int(label), 1)[0]
    correct += learner.predict_one(x) == label  # test, then train
    learner.learn_one(x, int(label))
print(f"streaming accuracy over {len(stream_labels)} readings: {correct / len(stream_labels):.3f}")

test_x = np.concatenate([readings(c, 100) for c in range(4)])
test_y = np.repeat(np.arange(4), 100)
print(f"accuracy on fresh readings of all 4 classes: {learner.evaluate(test_x, test_y):.3f}")
