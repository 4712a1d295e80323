"""ShapesWorld grammar: scenes of coloured shapes and the captions that describe them.

The world is deliberately small so that a tiny generator can learn it and a
detector can check it exactly:

* colours: red, green, blue, yellow, purple, cyan (hues about 60 degrees apart);
* shapes: circle, square, triangle, diamond (distinct silhouettes at 32 px);
* sizes: small and large (side 0.22 and 0.34 of the canvas);
* counts of one to four objects; pairwise relations left of / right of /
  above / below between groups of objects.

Three representations are used throughout:

* ``Description``: what a caption says (groups such as "two red circles" and
  relations between groups); sampled, rendered to text, parsed back.
* caption text: a ``Description`` written with real variety (synonyms, numbers
  as words or digits, relation phrasings, word order, articles).
* ``Scene``: concrete objects with positions in unit coordinates (x to the
  right, y downwards, both in [0, 1]); drawn by ``render.py``.

Held-out benchmark prompts are chosen by a hash rule on the *canonical form*
of a description (groups sorted, "right of"/"below" rewritten as "left of"/
"above"), so no paraphrase of a benchmark prompt can ever be a training
caption (see ``is_held_out``; ``parse.is_held_out`` takes caption text).
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

# ---------------------------------------------------------------------------
# Vocabulary (configs are data: every word list lives here, parse.py reads it)
# ---------------------------------------------------------------------------

#: Canonical colours and the RGB they are drawn with. Hues are spread around
#: the colour wheel (0, 55, 125, 185, 225, 285 degrees) so that a blurry image
#: still classifies by nearest hue.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "yellow": (235, 205, 35),
    "green": (40, 175, 60),
    "cyan": (40, 200, 215),
    "blue": (45, 70, 225),
    "purple": (165, 55, 205),
}
#: Plain light-grey background.
BACKGROUND: tuple[int, int, int] = (235, 235, 235)

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
SIZES: tuple[str, ...] = ("small", "large")
#: Side of an object's bounding square as a fraction of the canvas side.
SIZE_FRACTION: dict[str, float] = {"small": 0.22, "large": 0.34}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
INVERSE_RELATION: dict[str, str] = {
    "left of": "right of", "right of": "left of", "above": "below", "below": "above",
}

#: Surface words -> canonical value. The first word of each list is the
#: canonical one; the others are synonyms a caption may use.
COLOUR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("red", "scarlet"),
    "yellow": ("yellow",),
    "green": ("green",),
    "cyan": ("cyan", "turquoise"),
    "blue": ("blue",),
    "purple": ("purple", "violet"),
}
SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "disk"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus"),
}
SHAPE_PLURALS: dict[str, str] = {
    "circle": "circles", "disc": "discs", "disk": "disks", "square": "squares",
    "box": "boxes", "triangle": "triangles", "diamond": "diamonds", "rhombus": "rhombi",
}
SIZE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little", "tiny"),
    "large": ("large", "big"),
}
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "left of", "on the left of"),
    "right of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over", "on top of"),
    "below": ("below", "under", "beneath"),
}
NUMBER_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
)
CAPTION_PREFIXES: tuple[str, ...] = ("an image of", "a picture of", "a drawing of", "there is", "there are")

MAX_OBJECTS = 4

# Geometry (unit coordinates).
#: Minimum gap between the bounding squares of two objects.
GAP = 0.08
#: Margin kept between an object and the canvas border.
BORDER = 0.04
#: A stated relation is laid out with at least this separation of centres
#: along its axis; ``caption(scene)`` only states relations this clear.
LAYOUT_MARGIN = 0.18
#: A relation *holds* (detector, VQA) when centres differ by more than this.
RELATION_MARGIN = 0.06
#: One description in HOLDOUT_MODULUS (multi-group ones only) is held out.
HOLDOUT_MODULUS = 8


# ---------------------------------------------------------------------------
# Data types
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class SceneObject:
    """One drawn object: canonical colour/shape/size and its centre in unit coordinates."""

    colour: str
    shape: str
    size: str
    x: float
    y: float

    @property
    def side(self) -> float:
        return SIZE_FRACTION[self.size]


@dataclass(frozen=True)
class Scene:
    """A set of non-overlapping objects, e.g. ``Scene((SceneObject("red", "circle", "large", .3, .5),))``."""

    objects: tuple[SceneObject, ...] = ()


@dataclass(frozen=True)
class Group:
    """A noun phrase of a caption: ``count`` objects sharing shape and (if given) colour and size.

    ``colour``/``size``/``shape`` are ``None`` when the caption leaves them open
    ("two circles", "a red object").
    """

    count: int
    colour: str | None
    shape: str | None
    size: str | None = None

    def key(self) -> tuple:
        return (self.colour or "", self.shape or "", self.size or "", self.count)


@dataclass(frozen=True)
class Relation:
    """``groups[subject]`` is ``relation`` ``groups[object]`` (e.g. 0, "left of", 1)."""

    subject: int
    relation: str
    object: int


@dataclass(frozen=True)
class Description:
    """What a caption states: groups of objects and relations between groups."""

    groups: tuple[Group, ...] = ()
    relations: tuple[Relation, ...] = ()

    @property
    def n_objects(self) -> int:
        return sum(g.count for g in self.groups)


# ---------------------------------------------------------------------------
# Geometry helpers shared with the detector
# ---------------------------------------------------------------------------

def relation_holds(a_xy: tuple[float, float], b_xy: tuple[float, float], relation: str,
                   margin: float = RELATION_MARGIN) -> bool:
    """Whether a centre ``a_xy`` is ``relation`` of ``b_xy`` (unit coords, y downwards).

    >>> relation_holds((0.2, 0.5), (0.7, 0.5), "left of")
    True
    """
    dx = b_xy[0] - a_xy[0]
    dy = b_xy[1] - a_xy[1]
    if relation == "left of":
        return dx > margin
    if relation == "right of":
        return -dx > margin
    if relation == "above":
        return dy > margin
    if relation == "below":
        return -dy > margin
    raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")


def _separation(a: SceneObject, b: SceneObject, relation: str) -> tuple[float, float]:
    """(signed separation along the relation's axis, absolute offset across it)."""
    dx, dy = b.x - a.x, b.y - a.y
    return {
        "left of": (dx, abs(dy)), "right of": (-dx, abs(dy)),
        "above": (dy, abs(dx)), "below": (-dy, abs(dx)),
    }[relation]


def _overlaps(a: SceneObject, b: SceneObject, gap: float = GAP) -> bool:
    reach = (a.side + b.side) / 2 + gap
    return abs(a.x - b.x) < reach and abs(a.y - b.y) < reach


# ---------------------------------------------------------------------------
# Sampling descriptions
# ---------------------------------------------------------------------------

def _check_rng(rng) -> random.Random:
    if isinstance(rng, random.Random):
        return rng
    if isinstance(rng, int) and not isinstance(rng, bool):
        return random.Random(rng)
    raise TypeError(f"rng must be a random.Random or an int seed, got {type(rng).__name__}")


def _check_n_objects(n_objects) -> None:
    if n_objects is None:
        return
    if not isinstance(n_objects, int) or isinstance(n_objects, bool) or not 1 <= n_objects <= MAX_OBJECTS:
        raise ValueError(f"n_objects must be an int in 1..{MAX_OBJECTS} or None, got {n_objects!r}")


def sample_description(rng, n_objects: int | None = None, *, p_size: float = 0.5,
                       p_relation: float = 0.6, p_count: float = 0.35, _check_fit: bool = True) -> Description:
    """Sample what a caption states: 1-4 objects in groups, sizes, relations.

    Groups never share (colour, shape), so "two red circles" means exactly two.
    Relations form a tree (each group relates to at most one earlier group),
    so they are never contradictory.

    >>> sample_description(random.Random(0), n_objects=2).n_objects
    2
    """
    # 1. how many objects, split into groups
    rng = _check_rng(rng)
    _check_n_objects(n_objects)
    total = n_objects if n_objects is not None else rng.randint(1, MAX_OBJECTS)
    counts: list[int] = []
    left = total
    while left > 0:
        c = 1
        if left >= 2 and rng.random() < p_count:
            c = rng.randint(2, left)
        counts.append(c)
        left -= c
    # 2. attributes: distinct (colour, shape) per group
    used: set[tuple[str, str]] = set()
    groups = []
    for c in counts:
        while True:
            colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            if (colour, shape) not in used:
                used.add((colour, shape))
                break
        size = rng.choice(SIZES) if rng.random() < p_size else None
        groups.append(Group(c, colour, shape, size))
    # 3. relations: a tree over the groups
    relations = []
    for j in range(1, len(groups)):
        if rng.random() < p_relation:
            relations.append(Relation(j, rng.choice(RELATIONS), rng.randrange(j)))
    desc = Description(tuple(groups), tuple(relations))
    # 4. some combinations do not fit on the canvas (three large squares all
    #    above a circle): draw again, so every sampled caption can be rendered
    if _check_fit and not _fits(desc):
        return sample_description(rng, n_objects, p_size=p_size, p_relation=p_relation, p_count=p_count)
    return desc


def _fits(desc: Description) -> bool:
    """Whether ``desc`` lays out easily: three independent quick tries must all succeed."""
    key = canonical_key(desc)
    try:
        for k in range(3):
            layout(desc, random.Random(f"{key}/{k}"), max_tries=60)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------
# Writing descriptions as text
# ---------------------------------------------------------------------------

def _noun_phrase(g: Group, rng: random.Random, definite: bool) -> str:
    words: list[str] = []
    if definite:
        words.append("the")
        if g.count > 1 and rng.random() < 0.3:
            words.append(NUMBER_WORDS[g.count] if g.count < len(NUMBER_WORDS) else str(g.count))
    elif g.count == 1:
        words.append("one" if rng.random() < 0.1 else "a")
    else:
        use_digit = rng.random() < 0.5 or g.count >= len(NUMBER_WORDS)
        words.append(str(g.count) if use_digit else NUMBER_WORDS[g.count])
    if g.size is not None and (not definite or rng.random() < 0.5):
        words.append(rng.choice(SIZE_SYNONYMS[g.size]))
    if g.colour is not None:
        words.append(rng.choice(COLOUR_SYNONYMS[g.colour]))
    noun = rng.choice(SHAPE_SYNONYMS[g.shape]) if g.shape is not None else "object"
    if g.count > 1:
        noun = SHAPE_PLURALS.get(noun, noun + "s")
    words.append(noun)
    if words[0] == "a" and words[1][0] in "aeiou":
        words[0] = "an"
    return " ".join(words)


def _relation_clause(subj: str, subj_plural: bool, rel: str, obj: str,
                     rng: random.Random, copula_ok: bool) -> str:
    phrase = rng.choice(RELATION_PHRASES[rel])
    if copula_ok and rng.random() < 0.35:
        return f"{subj} {'are' if subj_plural else 'is'} {phrase} {obj}"
    return f"{subj} {phrase} {obj}"


def describe(desc: Description, rng) -> str:
    """Write ``desc`` as a caption with variety (synonyms, number forms, phrasing, order).

    >>> describe(Description((Group(1, "red", "circle"),)), random.Random(0)) != ""
    True
    """
    rng = _check_rng(rng)
    if not desc.groups:
        raise ValueError("cannot describe an empty Description (it has no groups)")
    n = len(desc.groups)
    # 1. a prefix ("an image of ...") sometimes; copulas only without one
    prefix = ""
    if rng.random() < 0.25:
        prefix = rng.choice(CAPTION_PREFIXES[:3])
    elif rng.random() < 0.15:
        prefix = "there are" if desc.groups[0].count > 1 else "there is"
    copula_ok = prefix == ""
    # 2. clauses: each group is introduced once, indefinitely; a relation is
    #    written from either end ("A left of B" or "B right of A")
    rel_of = {}
    extra = []
    for r in desc.relations:
        if r.object < r.subject and r.subject not in rel_of:
            rel_of[r.subject] = r
        else:
            extra.append(r)
    mentioned: set[int] = set()
    clauses: list[str] = []
    for j in range(n):
        if j in mentioned:
            continue
        r = rel_of.get(j)
        if r is not None:  # relate the new group j to an earlier, mentioned one
            a, rel, b = j, r.relation, r.object
            if rng.random() < 0.5:
                a, rel, b = b, INVERSE_RELATION[rel], a
            subj = _noun_phrase(desc.groups[a], rng, definite=a != j)
            obj = _noun_phrase(desc.groups[b], rng, definite=b != j)
            clauses.append(_relation_clause(subj, desc.groups[a].count > 1, rel, obj, rng, copula_ok))
            mentioned.add(j)
            continue
        # a later group relating to j: introduce both in one clause
        k = next((k for k, rk in rel_of.items() if rk.object == j and k not in mentioned), None)
        if k is not None:
            rk = rel_of[k]
            a, rel, b = k, rk.relation, j
            if rng.random() < 0.5:
                a, rel, b = b, INVERSE_RELATION[rel], a
            subj = _noun_phrase(desc.groups[a], rng, definite=False)
            obj = _noun_phrase(desc.groups[b], rng, definite=False)
            clauses.append(_relation_clause(subj, desc.groups[a].count > 1, rel, obj, rng, copula_ok))
            mentioned.update((j, k))
            continue
        clauses.append(_noun_phrase(desc.groups[j], rng, definite=False))
        mentioned.add(j)
    for r in extra:  # relations outside the tree (only from parsed captions)
        subj = _noun_phrase(desc.groups[r.subject], rng, definite=True)
        obj = _noun_phrase(desc.groups[r.object], rng, definite=True)
        clauses.append(_relation_clause(subj, desc.groups[r.subject].count > 1, r.relation, obj, rng, True))
    # 3. join clauses and dress the sentence
    if len(clauses) == 1:
        text = clauses[0]
    elif rng.random() < 0.7:
        text = ", ".join(clauses[:-1]) + " and " + clauses[-1]
    else:
        text = " and ".join(clauses)
    if prefix:
        text = f"{prefix} {text}"
    if rng.random() < 0.3:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.2:
        text += "."
    return text


def sample_caption(rng, n_objects: int | None = None) -> str:
    """A random caption of ``n_objects`` objects (1-4; random when None).

    >>> isinstance(sample_caption(random.Random(0), n_objects=3), str)
    True
    """
    rng = _check_rng(rng)
    return describe(sample_description(rng, n_objects), rng)


# ---------------------------------------------------------------------------
# Scenes: layout from a description, description from a scene
# ---------------------------------------------------------------------------

def layout(desc: Description, rng, *, max_tries: int = 4000) -> Scene:
    """Place the objects of ``desc`` without overlap so every stated relation holds clearly.

    Unspecified colours/sizes/shapes are drawn from ``rng``. Raises ValueError
    when no layout is found (e.g. too many large objects).

    >>> len(layout(Description((Group(2, "red", "circle"),)), random.Random(0)).objects)
    2
    """
    rng = _check_rng(rng)
    if desc.n_objects > 9:
        raise ValueError(f"ShapesWorld lays out at most 9 objects, the description has {desc.n_objects}")
    # 1. concrete attributes per object (group index kept for relations)
    specs: list[tuple[int, str, str, str]] = []
    taken = {(g.colour, g.shape) for g in desc.groups if g.colour and g.shape}
    for gi, g in enumerate(desc.groups):
        colour, shape = g.colour, g.shape
        if colour is None or shape is None:
            # pick open attributes so this group does not collide with another's key
            for _ in range(50):
                colour = g.colour or rng.choice(list(COLOURS))
                shape = g.shape or rng.choice(SHAPES)
                if (colour, shape) not in taken:
                    break
            taken.add((colour, shape))
        for _ in range(g.count):
            specs.append((gi, colour, shape, g.size))
    # 2. place objects one by one, each candidate checked for overlap and for
    #    the stated relations with objects already placed; a dead end restarts.
    #    Later attempts relax the "dominant axis" wish, then make open sizes small.
    def fits(cand: SceneObject, gi: int, placed: list[tuple[SceneObject, int]], dominant: bool) -> bool:
        for o, go in placed:
            if _overlaps(cand, o):
                return False
            for r in desc.relations:
                if (r.subject, r.object) == (gi, go):
                    along, across = _separation(cand, o, r.relation)
                elif (r.subject, r.object) == (go, gi):
                    along, across = _separation(o, cand, r.relation)
                else:
                    continue
                if along < LAYOUT_MARGIN or (dominant and across > along):
                    return False
        return True

    for attempt in range(max_tries):
        dominant = attempt < max_tries // 2
        placed: list[tuple[SceneObject, int]] = []
        for gi, colour, shape, size in specs:
            if size is None:
                size = rng.choice(SIZES) if attempt < 3 * max_tries // 4 else "small"
            half = SIZE_FRACTION[size] / 2 + BORDER
            for _ in range(40):
                cand = SceneObject(colour, shape, size, rng.uniform(half, 1 - half), rng.uniform(half, 1 - half))
                if fits(cand, gi, placed, dominant):
                    placed.append((cand, gi))
                    break
            else:
                break
        if len(placed) == len(specs):
            return Scene(tuple(o for o, _ in placed))
    raise ValueError(f"could not lay out {desc.n_objects} objects satisfying {len(desc.relations)} "
                     f"relations in {max_tries} tries; use fewer or smaller objects")


def sample_scene(rng, n_objects: int | None = None) -> Scene:
    """A random scene of 1-4 objects (laid out from a sampled description)."""
    rng = _check_rng(rng)
    return layout(sample_description(rng, n_objects), rng)


def scene_description(scene: Scene, rng, *, p_size: float = 0.5, p_relation: float = 0.6) -> Description:
    """A true ``Description`` of ``scene``: groups by (colour, shape), clear relations only."""
    rng = _check_rng(rng)
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
    # 1. group objects by (colour, shape) in order of first appearance
    order: list[tuple[str, str]] = []
    members: dict[tuple[str, str], list[SceneObject]] = {}
    for o in scene.objects:
        k = (o.colour, o.shape)
        if k not in members:
            order.append(k)
            members[k] = []
        members[k].append(o)
    rng.shuffle(order)
    groups = []
    for k in order:
        sizes = {o.size for o in members[k]}
        size = sizes.pop() if len(sizes) == 1 and rng.random() < p_size else None
        groups.append(Group(len(members[k]), k[0], k[1], size))
    # 2. relations that hold clearly for every pair of members
    relations = []
    for j in range(1, len(groups)):
        if rng.random() >= p_relation:
            continue
        options = []
        for i in range(j):
            for rel in RELATIONS:
                if all(_separation(a, b, rel)[0] >= LAYOUT_MARGIN and
                       _separation(a, b, rel)[1] <= _separation(a, b, rel)[0]
                       for a in members[order[j]] for b in members[order[i]]):
                    options.append(Relation(j, rel, i))
        if options:
            relations.append(rng.choice(options))
    return Description(tuple(groups), tuple(relations))


def caption(scene: Scene, rng) -> str:
    """A true caption of ``scene`` (grouped by colour and shape; only clear relations).

    >>> caption(Scene((SceneObject("red", "circle", "large", .3, .5),)), random.Random(1)).lower().count("circle") + caption(Scene((SceneObject("red", "circle", "large", .3, .5),)), random.Random(1)).lower().count("dis") > 0
    True
    """
    rng = _check_rng(rng)
    if not scene.objects:
        raise ValueError("cannot caption an empty scene")
    return describe(scene_description(scene, rng), rng)


# ---------------------------------------------------------------------------
# Held-out benchmark prompts
# ---------------------------------------------------------------------------

def canonical_key(desc: Description) -> str:
    """A text key equal for every paraphrase of the same description.

    Groups are sorted; "right of"/"below" are rewritten as "left of"/"above"
    with subject and object swapped.
    """
    order = sorted(range(len(desc.groups)), key=lambda i: desc.groups[i].key())
    new_index = {old: new for new, old in enumerate(order)}
    parts = ["|".join(map(str, desc.groups[i].key())) for i in order]
    rels = []
    for r in desc.relations:
        s, rel, o = new_index[r.subject], r.relation, new_index[r.object]
        if rel in ("right of", "below"):
            s, rel, o = o, INVERSE_RELATION[rel], s
        rels.append(f"{s} {rel} {o}")
    return ";".join(parts) + "#" + ";".join(sorted(rels))


def is_held_out(desc: Description) -> bool:
    """Whether a Description belongs to the held-out benchmark half (for a caption
    string: :func:`mmopt.shapesworld.parse.is_held_out`).

    Rule: descriptions with at least two groups whose ``canonical_key`` hashes
    (sha256) to 0 modulo HOLDOUT_MODULUS. Single-concept captions are never
    held out, so every colour/shape/size/count/relation is seen in training.
    """
    if not isinstance(desc, Description):
        raise TypeError(f"expected a Description (parse a caption with mmopt.shapesworld.parse.is_held_out), "
                        f"got {type(desc).__name__}")
    if len(desc.groups) < 2:
        return False
    digest = hashlib.sha256(canonical_key(desc).encode()).hexdigest()
    return int(digest[:8], 16) % HOLDOUT_MODULUS == 0


def training_description(rng, n_objects: int | None = None) -> Description:
    """A sampled description that is not held out."""
    rng = _check_rng(rng)
    while True:  # cheap hash test first, the layout check only for survivors
        desc = sample_description(rng, n_objects, _check_fit=False)
        if not is_held_out(desc) and _fits(desc):
            return desc


def training_caption(rng, n_objects: int | None = None) -> str:
    """A random training caption; never a paraphrase of a benchmark prompt."""
    rng = _check_rng(rng)
    return describe(training_description(rng, n_objects), rng)


def benchmark_descriptions(n: int = 50, seed: int = 0) -> list[Description]:
    """``n`` distinct held-out descriptions with 2-4 objects (see ``benchmark_prompts``)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    rng = random.Random(seed)
    out: list[Description] = []
    seen: set[str] = set()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 200_000:
            raise ValueError(f"could not find {n} distinct held-out prompts; ask for fewer")
        i = len(out)
        # stratify: object count cycles 2,3,4; every other prompt has a
        # relation; half of the 3-4 object prompts have a count ("two ...")
        n_obj = 2 + i % 3
        desc = sample_description(rng, n_obj, p_relation=0.8, p_count=0.5, _check_fit=False)
        if len(desc.groups) < 2 or not is_held_out(desc):
            continue
        if i % 2 == 0 and not desc.relations:
            continue
        want_count = n_obj >= 3 and (i // 3) % 2 == 0
        if want_count == all(g.count == 1 for g in desc.groups) and n_obj >= 3:
            continue
        key = canonical_key(desc)
        if key in seen or not _fits(desc):
            continue
        seen.add(key)
        out.append(desc)
    return out


def benchmark_prompts(n: int = 50, seed: int = 0) -> list[str]:
    """A fixed list of ``n`` held-out compositional prompts (2-4 objects).

    Deterministic for (n, seed); disjoint from everything ``training_caption``
    can return, paraphrases included.

    >>> len(benchmark_prompts(5))
    5
    """
    rng = random.Random(f"benchmark-text-{seed}")
    return [describe(d, rng) for d in benchmark_descriptions(n, seed)]
