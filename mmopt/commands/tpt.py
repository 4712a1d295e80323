"""``mmopt tpt``: test-time prompt tuning of CLIP on every test image (TPT; DiffTPT's views as an option).

    mmopt tpt --task colour_shape --split shift                    # from the task's hand prompt
    mmopt tpt --task count --context runs/runs/<id>/context.safetensors   # from a CoOp context
    mmopt tpt --data DIR --classnames names.txt --clip ViT-B-16/openai --init "a photo of a"

The run stores two trials: the starting prompt without tuning (trial 0) and
TPT (trial 1), each with the accuracy and the images per second.
"""
from __future__ import annotations

from mmopt.commands._options import non_negative_int, positive_float, positive_int
from mmopt.commands._prompt_learning import (add_common_options, add_data_options, check_data_args, fmt,
                                             open_run, progress_callback, save_result, set_threads)

HELP = "test-time prompt tuning: adapt CLIP's prompt to each test image (TPT, DiffTPT views)"


def add_arguments(p) -> None:
    add_data_options(p, test=False)
    p.add_argument("--split", choices=("test", "shift"), default="shift",
                   help="ShapesWorld split to evaluate (default shift: the distribution shift)")
    p.add_argument("--per-class", dest="per_class", type=positive_int, default=10,
                   help="ShapesWorld test images per class (default 10)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--init", help="starting phrase for the context (default: the task's hand prompt, "
                                      "or 'a photo of a' for --data)")
    start.add_argument("--context", help="start from a learned CoOp/KgCoOp context (.safetensors from mmopt coop)")
    p.add_argument("--views", type=positive_int, default=64, help="views per image incl. the original (64)")
    p.add_argument("--fraction", type=positive_float, default=0.1, help="lowest-entropy share kept (0.1)")
    p.add_argument("--steps", type=non_negative_int, default=1, help="tuning steps per image (1)")
    p.add_argument("--lr", type=positive_float, default=5e-3, help="AdamW learning rate (5e-3)")
    p.add_argument("--no-flip", dest="flip", action="store_false", default=None,
                   help="no horizontal flips in the views (default: off for the relation task)")
    p.add_argument("--diffusion", type=non_negative_int, default=0, metavar="N",
                   help="DiffTPT: replace N crops by img2img views of the shipped ShapesWorld generator "
                        "(2N generated, the N most similar kept)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seeds the views (default 0)")
    add_common_options(p)


def run(args) -> int:
    # 1. check everything that needs no model
    check_data_args(args)
    if args.fraction > 1:
        raise ValueError(f"--fraction must be in (0, 1], got {args.fraction}")
    if args.diffusion and args.diffusion >= args.views - 1:
        raise ValueError(f"--diffusion {args.diffusion} leaves no crop among {args.views} views")
    from mmopt.store import Store, check_run_id

    if args.run_id:
        check_run_id(args.run_id)
    set_threads(args)

    # 2. data and the TPT component (the model loads here)
    from mmopt.cache import content_key
    from mmopt.component import describe
    from mmopt.prompt_learning.tpt import TPT, DiffusionViews

    if args.task:
        from mmopt.shapesworld.tasks import get_task

        task = get_task(args.task)
        data = task.images(args.split, args.per_class)
        hand, flip = task.hand_template, task.flip_safe if args.flip is None else args.flip
    else:
        from mmopt.prompt_learning.data import image_folder

        data = image_folder(args.data, args.classnames).load()
        hand, flip = "a photo of a {}.", True if args.flip is None else args.flip
    prefix, _, tail = hand.partition("{}")
    diffusion = DiffusionViews(generate=2 * args.diffusion, keep=args.diffusion, seed=args.seed) \
        if args.diffusion else None
    common = dict(views=args.views, fraction=args.fraction, steps=args.steps, lr=args.lr, flip=flip,
                  diffusion=diffusion, seed=args.seed)
    if args.context:
        # the context's own model unless --clip names another one
        clip = None if args.clip == "offline:clip" else args.clip
        tpt = TPT(clip, context=args.context, **common)
    else:
        init = args.init or prefix.strip()
        tpt = TPT(args.clip, init=init, suffix=tail.strip() if init == prefix.strip() else ".", **common)
    config = {"command": "tpt", "tpt": describe(tpt), "data": {"task": args.task, "split": args.split,
              "per_class": args.per_class} if args.task else {"data": str(args.data), "classnames": list(data.classnames)}}
    run_id = args.run_id or content_key("tpt", config)[:16]
    store = Store(args.out)
    start = "CoOp context" if args.context else f"'{tpt.init}'"
    intent = f"tpt from {start} on {args.task or args.data}" + (f" ({args.split})" if args.task else "")

    with open_run(store, run_id, intent, config) as status:
        if status == "finished":
            for t in store.load_trials(run_id):
                print(f"  #{t.index} {t.prompt}: " + "  ".join(f"{k} {v:.3f}" for k, v in t.scores.items()))
            return 0
        # 3. every test image: views -> one forward -> tune on the confident ones -> predict -> reset
        bar, update = progress_callback(args, len(data), "tpt", "img")
        result = tpt.evaluate(data, progress=update)
        bar.close()
        label = "[CoOp context] {}" if args.context else hand
        save_result(store, run_id, 0, label, {"accuracy": result["start_accuracy"]}, "accuracy",
                    meta={"method": "no tuning"})
        save_result(store, run_id, 1, f"TPT({label})", {"accuracy": result["accuracy"],
                    "images_per_s": result["images_per_s"]}, "accuracy",
                    meta={"method": "tpt", "seconds": result["seconds"], "images": result["images"]})
        store.set_status(run_id, "finished", {"gain": result["accuracy"] - result["start_accuracy"],
                                               "best_objective": result["accuracy"],
                                               "original_objective": result["start_accuracy"], **result})
    print(f"run:        {run_id} ({len(data)} images, {args.views} views each, {args.steps} step(s))")
    print(f"no tuning:  {fmt(result['start_accuracy'])}")
    print(f"TPT:        {fmt(result['accuracy'])}  ({result['images_per_s']:.2f} images/s)")
    return 0
