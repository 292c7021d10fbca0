"""Renaming state-dict keys between checkpoint layouts (shared by the layout modules).

Keys are dotted module paths. A *prefix* pair renames a whole subtree
(``attn.out_proj`` -> ``pre_norm_mha.1.out_proj`` also renames ``attn.out_proj.weight``);
a *part* pair renames a dotted fragment wherever it sits between dots.
"""

from __future__ import annotations

from collections.abc import Sequence

NamePairs = Sequence[tuple[str, str]]


def swapped(pairs: NamePairs) -> tuple[tuple[str, str], ...]:
    """The same table read the other way: (a, b) -> (b, a)."""
    return tuple((new, old) for old, new in pairs)


def rename_prefix(key: str, pairs: NamePairs) -> str | None:
    """``key`` with its longest matching dotted prefix renamed, or None when no pair matches."""
    best: tuple[str, str] | None = None
    for old, new in pairs:
        if (key == old or key.startswith(old + ".")) and (best is None or len(old) > len(best[0])):
            best = (old, new)
    if best is None:
        return None
    return best[1] + key[len(best[0]) :]


def rename_parts(key: str, pairs: NamePairs) -> str:
    """``key`` with every dotted fragment ``old`` (bounded by dots or the key's ends) replaced, in order."""
    padded = f".{key}."
    for old, new in pairs:
        padded = padded.replace(f".{old}.", f".{new}.")
    return padded[1:-1]
