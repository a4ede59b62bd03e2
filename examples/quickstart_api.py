"""Learn a class-incremental stream of real digits with AR1* from Python.

    pip install -e ".[data]" && python examples/quickstart_api.py
"""

from edgecl import Learner, build_scenario, load_dataset

dataset = load_dataset("digits", seed=0)  # 1,797 real 8x8 digits, no download
scenario = build_scenario("class-incremental", dataset, n_experiences=5, seed=0)

learner = Learner(strategy="ar1*", input_shape=dataset.input_shape,
                  n_classes=dataset.n_classes, seed=0)
for experience in scenario.experiences:
    # The first call pretrains the backbone on this experience, then freezes it.
    learner.learn_many(experience.x, experience.y)
    seen = [e for e in scenario.experiences if e.index <= experience.index]
    accuracies = [learner.evaluate(e.x_test, e.y_test) for e in seen]
    print(f"after experience {experience.index} (classes {experience.classes}): "
          f"accuracy on each seen experience {[round(a, 3) for a in accuracies]}")

print(f"test accuracy over all {dataset.n_classes} classes: "
      f"{learner.evaluate(dataset.x_test, dataset.y_test):.3f}")
print("replay memory:", learner.memory_stats())
