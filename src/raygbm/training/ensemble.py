"""The k-fold ensemble as one LightGBM model.

A GBDT's raw score is the sum of its trees' leaf values, so the average of k models' raw scores is the sum
of all their trees with every leaf value divided by k. Written that way, the ensemble is an ordinary
LightGBM text model: the bundle, the endpoint, batch scoring, pyfunc and the drift reference use it with no
change (one model everywhere), and its raw score equals the mean of the fold models' raw scores (for a
binary or multiclass model the probability is then taken of that mean logit, as one model's is).
Plain text, nothing pickled; no Ray.
"""

from __future__ import annotations

import re

_TREE = re.compile(r"^Tree=\d+$", re.M)
_SCALED = ("leaf_value=", "internal_value=")


def _split(model: str) -> tuple[str, list[str], str]:
    """(header, tree blocks, the rest from ``end of trees`` on)."""
    head, sep, tail = model.partition("\nend of trees")
    if not sep:
        raise ValueError("not a LightGBM text model (no 'end of trees')")
    starts = [m.start() for m in _TREE.finditer(head)]
    if not starts:
        raise ValueError("a LightGBM text model without trees")
    blocks = [head[a:b].strip("\n") for a, b in zip(starts, starts[1:] + [len(head)])]
    return head[:starts[0]], blocks, "end of trees" + tail


def _scale(block: str, factor: float) -> str:
    out = []
    for line in block.splitlines():
        if line.startswith("is_linear=") and line != "is_linear=0":
            raise ValueError("linear trees cannot be averaged this way")
        key = next((k for k in _SCALED if line.startswith(k)), None)
        if key is not None:
            line = key + " ".join(repr(float(v) * factor) for v in line[len(key):].split())
        out.append(line)
    return "\n".join(out)


def average_models(models: list[str]) -> str:
    """One LightGBM text model whose raw score is the mean of ``models``' raw scores (each already cut to
    the iterations it should use). The models must share features, task and classes."""
    if not models:
        raise ValueError("no models to average")
    header, _, tail = _split(models[0])
    keys = ("num_class=", "num_tree_per_iteration=", "objective=", "feature_names=")
    fingerprint = [line for line in header.splitlines() if line.startswith(keys)]
    trees: list[str] = []
    for text in models:
        h, blocks, _ = _split(text)
        if [line for line in h.splitlines() if line.startswith(keys)] != fingerprint:
            raise ValueError("models with different features, objective or classes cannot be averaged")
        trees += [_scale(b, 1.0 / len(models)) for b in blocks]
    # tree_sizes (byte offsets for parallel parsing) no longer hold; LightGBM reads the trees in order without it.
    header = "\n".join(line for line in header.splitlines() if not line.startswith("tree_sizes="))
    numbered = [re.sub(r"^Tree=\d+", f"Tree={i}", t, count=1) for i, t in enumerate(trees)]
    return header.rstrip("\n") + "\n\n" + "\n\n\n".join(numbered) + "\n\n\n" + tail
