"""Learn from your own numpy arrays, one sample at a time, as a sensor stream would arrive.

    python examples/own_arrays_one_at_a_time.py

The arrays here are made up (three kinds of 32-value sensor readings, a fourth appearing
later); replace them with yours: any float array of shape (N, D), (N, H, W) or (N, C, H, W)
and your own labels, integers or strings. The learner is not told how many classes there
will be: its output layer grows when a new label arrives.
"""

import numpy as np

from edgecl import Learner

rng = np.random.default_rng(0)
kinds = ["idle", "walk", "run", "fall"]
centres = {kind: rng.normal(size=32).astype(np.float32) for kind in kinds}


def readings(kind: str, n: int) -> np.ndarray:
    return (centres[kind] + 0.6 * rng.normal(size=(n, 32))).astype(np.float32)


learner = Learner(strategy="latent-replay", input_shape=(32,), seed=0)

# A short warm-up batch of the classes known at deployment pretrains the backbone.
warm_y = np.repeat(kinds[:3], 50)
warm_x = np.concatenate([readings(kind, 50) for kind in kinds[:3]])
learner.learn_many(warm_x, warm_y)

# Then the stream: one reading at a time, and "fall" starts to appear halfway through.
correct = 0
stream = [kinds[i] for i in np.concatenate([rng.integers(0, 3, 200), rng.integers(0, 4, 200)])]
for kind in stream:
    x = readings(kind, 1)[0]
    correct += learner.predict_one(x) == kind  # test, then train
    learner.learn_one(x, kind)
print(f"streaming accuracy over {len(stream)} readings: {correct / len(stream):.3f}")
print(f"classes learned, in order of arrival: {learner.classes}")

test_x = np.concatenate([readings(kind, 100) for kind in kinds])
test_y = np.repeat(kinds, 100)
print(f"accuracy on fresh readings of all 4 classes: {learner.evaluate(test_x, test_y):.3f}")
