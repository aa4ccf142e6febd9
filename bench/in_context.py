"""Does a trained model read its supports? The in-context recipe against today's, on the embedded dataset.

Default `useg train` runs (12 epochs of 512 tasks at 64 px, 1 thread each, two at a time, so that the
figures do not depend on the thread count the machine would choose):

- `today`: `--task-augmentation off --in-task-augmentation off --synthetic-tasks 0` (the
  recipe before issue 26);
- `recipe`: the defaults (task and in-task augmentation `on`, dice+bce);
- `held_out_today` and `held_out_recipe` (`python -m bench --only unseen_class`): the same,
  trained on 2 of the 3 classes (`--classes cyst,solid`), scored on the third
  (`septated_cyst`) from a few examples.

Each is scored by `useg evaluate` on its test split (held-out patients):
- support reliance: `--task inverted` gives the supports inverted labels and scores the
  prediction, inverted back, against the true mask; a model that ignores its supports scores
  near 0, one that reads them scores like the normal task (goal: >= 0.8 x normal);
- unseen class: the held-out class's Dice against the trained classes' at the same support
  size (goal >= 0.8 x at 16), and at support 16 against support 1 (goal +0.03);
- trained classes: the recipe's normal Dice within 0.02 of today's; its val Dice >= 0.75.

`in_context` trains each recipe with seeds 0, 1 and 2 (each seed its own patient split, the same for
both recipes) and judges the means: one 12-epoch run moves by up to 0.05 in support reliance and 0.02
in test Dice from one seed to the next.
"""

from __future__ import annotations

import statistics
import time

from .common import (Row, Section, Settings, child_env, evaluate_json as evaluate, run_timed, shell, side_by_side,
                     training_history, useg_args, verdict)

OFF = ["--task-augmentation", "off", "--in-task-augmentation", "off", "--synthetic-tasks", "0"]
TRAINED, HELD_OUT = "cyst,solid", "septated_cyst"
RUNS = {"today": OFF, "recipe": []}
HELD_OUT_RUNS = {"held_out_today": [*OFF, "--classes", TRAINED], "held_out_recipe": ["--classes", TRAINED]}
TRAIN = ["--quiet", "--num-threads", "1", "--vis-every", "0"]
SEEDS = (0, 1, 2)


def run(settings: Settings) -> list[Section]:
    section = Section("In-context recipe: does the model read its supports? (embedded dataset)",
                      "default recipe", "today's recipe")
    if settings.quick:
        return skipped(section)
    started = time.perf_counter()
    keys = [(name, seed) for name in RUNS for seed in SEEDS]
    trained = train_all(settings, {f"{name}_seed{seed}": [*RUNS[name], "--seed", str(seed)] for name, seed in keys})
    folders = dict(zip(keys, trained.values()))
    scores = {key: evaluate(folders[key], "--task", "inverted") for key in keys}
    vals = {key: training_history(folders[key])["best_val_dice"] for key in keys}
    normal = {name: mean(scores[name, seed]["mean_dice"] for seed in SEEDS) for name in RUNS}
    inverted = {name: mean(inverted_dice(scores[name, seed]) for seed in SEEDS) for name in RUNS}
    val = {name: mean(vals[name, seed] for seed in SEEDS) for name in RUNS}

    def ratio(name: str) -> float:
        return inverted[name] / normal[name]

    train_command = shell(useg_args("train", "--run-dir", "RUN", "--quiet", "--num-threads", "1", "--seed", "S"))
    of_seeds = f"mean of seeds {', '.join(map(str, SEEDS))}"
    section.rows.append(Row(
        case=f"support reliance: inverted-task Dice / normal Dice (test split, support 4, {of_seeds})",
        command=f"`{train_command}`, then `useg evaluate --run-dir RUN --task inverted --json`",
        ours=f"{ratio('recipe'):.2f} ({normal['recipe']:.4f} / {inverted['recipe']:.4f})",
        baseline=f"{ratio('today'):.2f} ({normal['today']:.4f} / {inverted['today']:.4f})",
        ratio="-", goal=">= 0.80", verdict=verdict(ratio("recipe") >= 0.8)))
    section.rows.append(Row(
        case=f"trained classes: normal-task Dice (test split, {of_seeds})", command="the same evaluation",
        ours=f"{normal['recipe']:.4f}", baseline=f"{normal['today']:.4f}",
        ratio=f"{normal['recipe'] - normal['today']:+.4f}",
        goal="no worse than -0.02", verdict=verdict(normal["recipe"] - normal["today"] >= -0.02)))
    section.rows.append(Row(
        case=f"default run: best validation Dice ({of_seeds})", command=f"`{train_command}` (the log's best_val_dice)",
        ours=f"{val['recipe']:.4f}", baseline=f"{val['today']:.4f}", ratio=f"{val['recipe'] - val['today']:+.4f}",
        goal=">= 0.75", verdict=verdict(val["recipe"] >= 0.75)))
    for name, label in (("today", "today's recipe"), ("recipe", "the default recipe")):
        runs = "; ".join(f"seed {seed} {kind_dice(scores[name, seed])} ({reliance(scores[name, seed]):.2f}), "
                         f"val {vals[name, seed]:.4f}" for seed in SEEDS)
        section.reading.append(f"{label.capitalize()}, normal / inverted test Dice (ratio) and best val Dice: {runs}.")
    section.reading.append(
        "A ratio near 0 is a model that segments the lesion whatever its supports say. Each seed draws its own "
        "patient split, the same for both recipes, so the trained-class row is the mean of paired differences.")
    section.seconds = time.perf_counter() - started
    return [section]


def run_unseen_class(settings: Settings) -> list[Section]:
    section = Section(f"In-context recipe: a class never trained ({HELD_OUT}, embedded dataset)",
                      "default recipe", "today's recipe")
    if settings.quick:
        return skipped(section)
    started = time.perf_counter()
    folders = train_all(settings, HELD_OUT_RUNS)
    unseen = {name: evaluate(folders[name], "--classes", HELD_OUT, "--support-size", "1,16") for name in folders}
    trained = {name: evaluate(folders[name], "--classes", TRAINED, "--support-size", "1,16") for name in folders}
    train_command = shell(useg_args("train", "--run-dir", "RUN", "--quiet", "--num-threads", "1", "--classes", TRAINED))
    evaluate_command = f"`useg evaluate --run-dir RUN --classes {{}} --support-size 1,16 --json`"
    for size in (1, 16):
        held = {name: dice_at(unseen[name], size) / dice_at(trained[name], size) for name in folders}
        section.rows.append(Row(
            case=f"unseen class / trained classes ({TRAINED}), Dice at support {size}",
            command=f"`{train_command}`, then " + evaluate_command.format(HELD_OUT) + " and "
                    + evaluate_command.format(TRAINED),
            ours=f"{held['held_out_recipe']:.2f} ({dice_at(unseen['held_out_recipe'], size):.4f} / "
                 f"{dice_at(trained['held_out_recipe'], size):.4f})",
            baseline=f"{held['held_out_today']:.2f} ({dice_at(unseen['held_out_today'], size):.4f} / "
                     f"{dice_at(trained['held_out_today'], size):.4f})",
            ratio="-", goal=">= 0.80" if size == 16 else "", verdict=verdict(held["held_out_recipe"] >= 0.8)
            if size == 16 else ""))
    gain = {name: dice_at(unseen[name], 16) - dice_at(unseen[name], 1) for name in folders}
    section.rows.append(Row(
        case=f"unseen class {HELD_OUT}: Dice at support 16 minus support 1", command="the same evaluation",
        ours=f"{gain['held_out_recipe']:+.4f}", baseline=f"{gain['held_out_today']:+.4f}",
        ratio="-", goal=">= +0.03", verdict=verdict(gain["held_out_recipe"] >= 0.03)))
    section.reading.append(
        f"Trained on {TRAINED} only, the model segments {HELD_OUT} from its supports alone; both sides of each "
        "ratio are scored at the same support size on the test split's patients.")
    section.seconds = time.perf_counter() - started
    return [section]


def skipped(section: Section) -> list[Section]:
    section.reading.append("Skipped with --quick (its default training runs take 7 to 25 minutes).")
    return [section]


def train_all(settings: Settings, runs: dict[str, list[str]]) -> dict:
    """Each run's folder by name, in the order given, once all are trained."""
    folders = {name: settings.workdir / f"in_context_{name}" for name in runs}

    def train(name: str) -> None:
        run_timed(useg_args("train", "--run-dir", str(folders[name]), *TRAIN, *runs[name]), env=child_env())

    side_by_side(train, runs)
    return folders


def kind_dice(record: dict) -> str:
    return f"{record['mean_dice']:.4f} / {inverted_dice(record):.4f}"


def inverted_dice(record: dict) -> float:
    return record["task_kinds"]["inverted"]["mean_dice"]


def reliance(record: dict) -> float:
    return inverted_dice(record) / record["mean_dice"]


def mean(values) -> float:
    return statistics.fmean(values)


def dice_at(record: dict, support_size: int) -> float:
    return next(point["mean_dice"] for point in record["sweep"] if point["support_size"] == support_size)

