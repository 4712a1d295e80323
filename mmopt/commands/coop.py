"""``mmopt coop``: learn CLIP class-prompt context from a few shots (CoOp, CoCoOp, KgCoOp).

    mmopt coop --task count --shots 16 --seed 1                    # ShapesWorld, offline
    mmopt coop --data DIR --classnames names.txt --method kgcoop --clip ViT-B-16/openai
    mmopt coop --task colour_shape --method cocoop --base-to-new

The run stores two trials: the hand-written prompt (zero-shot, trial 0) and the
learned context (trial 1, its ``context.safetensors`` in the run folder), with
the accuracy on every evaluation split in their scores. The same command again
reads the finished run back instead of training again.
"""
from __future__ import annotations

import sys

from mmopt.commands._options import non_negative_int, positive_float, positive_int
from mmopt.commands._prompt_learning import (add_common_options, add_data_options, check_data_args, fmt,
                                             open_run, progress_callback, save_result, set_threads)

HELP = "learn class-prompt context for CLIP from a few shots (CoOp, CoCoOp, KgCoOp)"
METHODS = ("coop", "cocoop", "kgcoop")


def add_arguments(p) -> None:
    add_data_options(p)
    p.add_argument("--method", choices=METHODS, default="coop", help="coop (default), cocoop or kgcoop")
    p.add_argument("--shots", type=positive_int, default=16, help="training images per class (default 16)")
    p.add_argument("--seed", type=non_negative_int, default=1, help="the few-shot draw and the learner's seed")
    p.add_argument("--n-ctx", dest="n_ctx", type=positive_int,
                   help="context vectors (default: 16 for CoOp, 4 for CoCoOp/KgCoOp, or --init's token count)")
    p.add_argument("--init", help="phrase that initialises the context, e.g. 'a photo of a' "
                                  "(default: random for CoOp, the hand prompt's words for CoCoOp/KgCoOp)")
    p.add_argument("--position", choices=("end", "middle", "front"), default="end", help="where the class name goes")
    p.add_argument("--csc", action="store_true", help="class-specific context (CoOp only)")
    p.add_argument("--epochs", type=positive_int, help="epochs (default: CoOp's 50/100/200 by shots; CoCoOp 10)")
    p.add_argument("--lr", type=positive_float, default=0.002, help="SGD learning rate (default 0.002)")
    p.add_argument("--batch-size", dest="batch_size", type=positive_int,
                   help="batch size (default 32; CoCoOp 1)")
    p.add_argument("--hand-template", dest="hand_template",
                   help="the hand-written prompt with {} for the class (zero-shot baseline, KgCoOp's anchor); "
                        "default: the task's, or 'a photo of a {}.' for --data")
    p.add_argument("--weight", type=float, default=8.0, help="KgCoOp's regulariser weight (default 8.0)")
    p.add_argument("--base-to-new", dest="base_to_new", action="store_true",
                   help="train on the first half of the classes, test on both halves (base / new / harmonic mean)")
    p.add_argument("--eval-per-class", dest="eval_per_class", type=positive_int, default=20,
                   help="test images per class and split (default 20)")
    add_common_options(p)


def _splits(args, classnames, base, new):
    """{split name: ImageSet} to evaluate on, and the train draw."""
    from mmopt.prompt_learning.data import few_shot, image_folder, rest_of
    from mmopt.shapesworld.tasks import shapesworld_few_shot

    if args.task:
        from mmopt.shapesworld.tasks import get_task

        task = get_task(args.task)
        train = shapesworld_few_shot(args.task, args.shots, args.seed, base if args.base_to_new else None)
        evals = {s: task.images(s, args.eval_per_class) for s in ("test", "shift")}
    else:
        folder = image_folder(args.data, args.classnames)
        draw = few_shot(folder, args.shots, args.seed)
        test = image_folder(args.test, args.classnames) if args.test else rest_of(folder, draw, args.eval_per_class)
        if test.classnames != folder.classnames:
            raise ValueError(f"--test has the classes {list(test.classnames)[:5]}..., --data has "
                             f"{list(folder.classnames)[:5]}...: give both the same class folders")
        if not len(test):
            raise ValueError("no test images: every image of --data was drawn as a shot; give --test DIR")
        train = draw.subset(base) if args.base_to_new else draw
        evals = {"test": test}
    if args.base_to_new:
        out = {}
        for name, data in evals.items():
            suffix = "" if name == "test" else f"_{name}"
            out[f"base{suffix}"] = data.subset(base)
            out[f"new{suffix}"] = data.subset(new)
        evals = out
    return train, evals


def _with_hm(scores: dict) -> dict:
    """The scores with the harmonic mean of base and new accuracy (the papers' H) after each new."""
    out = {}
    for key, value in scores.items():
        out[key] = value
        if key.startswith("new") and "base" + key[3:] in scores:
            b, n = scores["base" + key[3:]], value
            out["hm" + key[3:]] = 0.0 if b + n == 0 else 2 * b * n / (b + n)
    return out


def run(args) -> int:
    # 1. check everything that needs no model
    check_data_args(args)
    if args.csc and args.method != "coop":
        raise ValueError("--csc is CoOp's option (CoCoOp and KgCoOp learn one shared context)")
    if args.csc and args.base_to_new:
        raise ValueError("--csc cannot classify new classes (its context is per training class); drop one")
    if args.hand_template is not None:
        from mmopt.prompt_learning.adapter import check_template

        check_template(args.hand_template)
    from mmopt.store import Store, check_run_id

    if args.run_id:
        check_run_id(args.run_id)
    set_threads(args)

    # 2. data, classes, the learner (the model loads here)
    from mmopt.cache import content_key
    from mmopt.component import describe
    from mmopt.prompt_learning import method_class
    from mmopt.prompt_learning.adapter import CLIPPromptAdapter
    from mmopt.prompt_learning.data import base_new_split, image_folder

    if args.task:
        from mmopt.shapesworld.tasks import get_task

        task = get_task(args.task)
        classnames, hand = task.classnames, args.hand_template or task.hand_template
    else:
        classnames, hand = image_folder(args.data, args.classnames).classnames, args.hand_template or "a photo of a {}."
    base, new = base_new_split(classnames) if args.base_to_new else (tuple(range(len(classnames))), ())
    train, evals = _splits(args, classnames, base, new)
    adapter = CLIPPromptAdapter(args.clip)
    prefix, _, tail = hand.partition("{}")
    # CoCoOp and KgCoOp start from the hand prompt's words (the papers' "a photo of a"); CoOp from noise
    init = args.init if args.method == "coop" else (args.init or prefix.strip() or None)
    kwargs = {"init": init, "position": args.position, "lr": args.lr, "seed": args.seed,
              # started from the hand prompt's own words, the learner's step 0 IS the zero-shot prompt
              "suffix": tail.strip() if init is not None and init == prefix.strip() else "."}
    if args.n_ctx is not None:
        kwargs["n_ctx"] = args.n_ctx
    if args.epochs:
        kwargs["epochs"] = args.epochs
    if args.batch_size:
        kwargs["batch_size"] = args.batch_size
    if args.method == "coop":
        kwargs["csc"] = args.csc
    if args.method == "kgcoop":
        kwargs.update(hand_template=hand, weight=args.weight)
    learner = method_class(args.method)(adapter, **kwargs)
    data_id = {"task": args.task} if args.task else {"data": str(args.data), "test": args.test,
                                                    "classnames": list(classnames)}
    config = {"command": "coop", "learner": describe(learner), "data": data_id, "shots": args.shots,
              "base_to_new": args.base_to_new, "hand_template": hand, "eval_per_class": args.eval_per_class}
    run_id = args.run_id or content_key("coop", config)[:16]
    store = Store(args.out)
    intent = f"{args.method} {args.shots}-shot on {args.task or args.data}"

    with open_run(store, run_id, intent, config) as status:
        if status == "finished":
            trials = store.load_trials(run_id)
            print(f"run {run_id} is finished (stored in {args.out}); its results:")
            for t in trials:
                print(f"  #{t.index} {t.prompt}: " + "  ".join(f"{k} {fmt(v)}" for k, v in t.scores.items()))
            return 0
        # 3. zero-shot with the hand-written prompt (trial 0)
        from mmopt.prompt_learning.coop import zero_shot_accuracy

        zero = _with_hm({name: zero_shot_accuracy(adapter, hand, data) for name, data in evals.items()})
        main = "hm" if args.base_to_new else "test"
        save_result(store, run_id, 0, hand, zero, main, meta={"method": "zero-shot"})
        # 4. learn, save the context in the run folder, evaluate (trial 1)
        bar, update = progress_callback(args, 1, f"{args.method} {args.shots}-shot", "epoch")

        def progress(epoch, epochs, loss):
            bar.total = epochs
            update(epoch)
            bar.set_postfix(loss=f"{loss:.3f}")

        learner.fit(train, progress=progress)
        bar.close()
        path = store.run_dir(run_id) / "context.safetensors"
        learner.save(path)
        learned = _with_hm({name: learner.accuracy(data) for name, data in evals.items()})
        label = f"[{learner.n_ctx} learned vectors] {{}}" if learner.position == "end" else \
            f"[{learner.n_ctx} learned vectors, class {learner.position}]"
        save_result(store, run_id, 1, label, learned, main,
                    meta={"method": args.method, "fit": learner.fit_info, "train_images": len(train)},
                    payload={"context_file": str(path.relative_to(store.root))})
        summary = {"gain": learned[main] - zero[main], "best_objective": learned[main],
                   "original_objective": zero[main], "zero_shot": zero, "learned": learned,
                   "context_file": str(path), "method": args.method}
        store.set_status(run_id, "finished", summary)

    # 5. the result, papers' style
    print(f"run:        {run_id} ({args.method}, {args.shots} shots, draw {args.seed}; "
          f"{learner.fit_info['epochs']} epochs in {learner.fit_info['seconds']:.1f} s)")
    print("split       " + "  ".join(f"{k:>8}" for k in zero))
    print("zero-shot   " + "  ".join(f"{fmt(v):>8}" for v in zero.values()))
    print(f"{args.method:<11} " + "  ".join(f"{fmt(v):>8}" for v in learned.values()))
    print(f"context:    {path}", file=sys.stdout)
    return 0
