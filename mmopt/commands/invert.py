"""``mmopt invert IMAGE...``: the hard prompt CLIP reads in an image (PEZ), optionally refined by the loop.

    mmopt invert target.png                         # shipped ShapesWorld CLIP, 3000 steps
    mmopt invert a.png b.png --steps 1000 --length 8 --clip ViT-B-16/openai
    mmopt invert target.png --optimize --iterations 3   # image -> prompt -> refine (offline:t2i, smollm2)

Each image is inverted on its own and stored as one trial (the prompt, its
CLIP similarity to the image). With ``--optimize`` the first image's prompt is
the intent of an optimization run (stored in the same folder) whose scorer is
CLIP image similarity to that image.
"""
from __future__ import annotations

from pathlib import Path

from mmopt.commands._options import non_negative_int, positive_float, positive_int
from mmopt.commands._prompt_learning import add_common_options, open_run, progress_callback, save_result, set_threads

HELP = "invert images into hard prompts (PEZ); --optimize refines the prompt in the optimization loop"


def add_arguments(p) -> None:
    p.add_argument("images", nargs="+", help="image files to invert")
    p.add_argument("--length", type=positive_int, default=16, help="prompt tokens (16)")
    p.add_argument("--steps", type=positive_int, default=3000, help="optimisation steps (3000)")
    p.add_argument("--lr", type=positive_float, default=0.1, help="AdamW learning rate (0.1)")
    p.add_argument("--weight-decay", dest="weight_decay", type=float, default=0.1, help="AdamW weight decay (0.1)")
    p.add_argument("--vocabulary", help="a file of allowed words (one per line), or 'shapesworld' for the "
                                        "ShapesWorld words; default: the whole CLIP vocabulary")
    p.add_argument("--templates", help="sentence templates with word slots instead of free tokens: "
                                       "'shapesworld' (shipped) or a JSON file {slots, templates}; "
                                       "--steps is then split over the templates")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seeds the starting tokens (0)")
    p.add_argument("--optimize", action="store_true", help="refine the first image's prompt in the loop")
    p.add_argument("--generator", default="offline:t2i", help="generator for --optimize (default offline:t2i)")
    p.add_argument("--llm", default="smollm2", help="LLM for --optimize (default smollm2)")
    p.add_argument("--proposer", default="opt2i", help="--optimize proposer: 'opt2i' (default, the LLM rewrites) "
                                                        "or 'tried' (with --templates: the other templates' "
                                                        "sentences, chosen by how the generator renders them; "
                                                        "no LLM) or 'slots' (the same, then --iterations rounds "
                                                        "of one-word edits of the best sentence; no LLM)")
    p.add_argument("--iterations", type=positive_int, default=3, help="--optimize iterations (3)")
    p.add_argument("--candidates", type=positive_int, default=3, help="--optimize prompts per iteration (3)")
    p.add_argument("--seeds", type=positive_int, default=2, help="--optimize images per prompt (2)")
    add_common_options(p)


def _iteration_bar(iterations: int):
    """A tqdm bar over the refining loop's iterations, with the best image similarity so far."""
    from mmopt.commands._options import progress_bar

    bar = progress_bar(iterations, "optimizing", unit="iter")

    def callback(event, **info):
        if event == "iteration":
            bar.update(1)
            bar.set_postfix(best=f"{info['best'].objective:.3f}")
        elif event == "done":
            bar.close()

    return callback


def _vocabulary(value: str | None) -> list[str] | None:
    if value is None:
        return None
    if value == "shapesworld":
        from mmopt.shapesworld.tasks import world_words

        return world_words()
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"--vocabulary must be 'shapesworld' or a file of words, got {value!r}")
    words = [w for line in path.read_text(encoding="utf-8").splitlines() for w in line.split()]
    if not words:
        raise ValueError(f"--vocabulary file {value!r} has no words")
    return words


def run(args) -> int:
    # 1. check everything that needs no model; unreadable images are one clear line
    from mmopt.prompt_learning.data import _open
    from mmopt.store import Store, check_run_id

    images = []
    for path in args.images:
        ok, value = _open(path)
        if not ok:
            raise ValueError(f"cannot read image {path!r}: {value}")
        images.append(value)
    vocabulary = _vocabulary(args.vocabulary)
    from mmopt.prompt_learning.pez import load_templates  # checked before any model loads

    templates = load_templates(args.templates) if args.templates else None
    if templates and vocabulary:
        raise ValueError("--templates and --vocabulary do not combine: the templates' slots name their words")
    if args.proposer in ("tried", "slots") and not templates:
        raise ValueError(f"--proposer {args.proposer} chooses among the templates' sentences: it needs --templates")
    if args.run_id:
        check_run_id(args.run_id)
    set_threads(args)

    # 2. PEZ (the model loads here); one run, one trial per image
    from mmopt.cache import content_key
    from mmopt.component import describe
    from mmopt.fingerprint import file_fingerprint
    from mmopt.prompt_learning.pez import PEZ, invert_and_optimize

    pez = PEZ(args.clip, length=args.length, steps=args.steps, lr=args.lr, weight_decay=args.weight_decay,
              vocabulary=vocabulary, seed=args.seed)
    config = {"command": "invert", "pez": describe(pez), "images": [file_fingerprint(p) for p in args.images],
              **({"templates": templates} if templates else {})}
    each = max(1, args.steps // len(templates["templates"])) if templates else args.steps
    total = each * len(templates["templates"]) if templates else args.steps  # steps per image
    run_id = args.run_id or content_key("invert", config)[:16]
    store = Store(args.out)
    results = []
    with open_run(store, run_id, f"invert {len(images)} image(s)", config) as status:
        if status == "finished":
            results = [{"prompt": t.prompt, **t.scores, **({"tried": t.meta["tried"]} if "tried" in t.meta else {})}
                       for t in store.load_trials(run_id)]
        else:
            for i, (path, image) in enumerate(zip(args.images, images)):
                bar, update = progress_callback(args, total, f"invert {Path(path).name}", "step")

                def progress(step, steps, best, bar=bar, update=update):
                    update(step)
                    if step % 50 == 0:
                        bar.set_postfix(best=f"{best:.3f}")

                if templates:
                    r = pez.invert_templates([image], templates["templates"], templates["slots"], steps=each,
                                             progress=progress, opposites=templates.get("opposites"))
                else:
                    r = pez.invert([image], progress=progress)
                bar.close()
                results.append(r)
                save_result(store, run_id, i, r["prompt"], {"similarity": r["similarity"],
                            "projected_similarity": r["projected_similarity"]}, "similarity",
                            meta={"image": str(path), "best_step": r["best_step"], "seconds": r["seconds"],
                                  **({"tried": r["tried"]} if "tried" in r else {})},
                            payload={"template": r["template"]} if templates else {"token_ids": r["token_ids"]})
            mean = sum(r["similarity"] for r in results) / len(results)
            store.set_status(run_id, "finished", {"best_objective": mean, "prompts": [r["prompt"] for r in results]})
    for path, r in zip(args.images, results):
        print(f"{path}: {r['prompt']}  (CLIP similarity {r['similarity']:.3f})")
    print(f"run:        {run_id} in {args.out}")

    # 3. image -> prompt -> refine: the first image's prompt is the loop's intent
    if args.optimize:
        callbacks = [] if args.no_progress else [_iteration_bar({"tried": 2, "slots": 2 + args.iterations}.get(args.proposer, args.iterations))]
        _, result = invert_and_optimize(images[:1], pez=pez, generator=args.generator, llm=args.llm,
                                        proposer=args.proposer,
                                        iterations=args.iterations, candidates=args.candidates, seeds=args.seeds,
                                        store=store, callbacks=callbacks, inverted=results[0],
                                        **({"templates": args.templates} if templates else {}))
        name = next(iter(result.best.scores))
        print(f"optimized:  {result.best_prompt}  (image similarity {result.best.scores[name]:.3f}; the "
              f"inverted prompt's {result.original.scores[name]:.3f}; run {result.run_id})")
    return 0
