"""Auxiliary classes for training: machine type x section x attribute combination x domain.

Built from the training data and saved with the model, so that scoring and resumed training use
the same class indices. The domain is part of the class key (as in Wilkinghoff's system): where a
dataset hides the attributes (``noAttribute``), a section's source and target clips would
otherwise fall into one class. Runs started before this (``class_domain=false``, and bundles whose
class names have three parts) keep their classes.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel

UNKNOWN_DOMAIN = "unknown"  # a training clip whose domain is not known


def class_key(machine: str, section: str, domain: str | None, attribute_key: str, with_domain: bool) -> tuple:
    return (machine, section, domain or UNKNOWN_DOMAIN, attribute_key) if with_domain else (machine, section,
                                                                                           attribute_key)


def class_name(*parts: str) -> str:
    return "|".join(parts)


class LabelMap(BaseModel):
    classes: list[str]

    @classmethod
    def from_clips(cls, keys: Iterable[tuple[str, ...]]) -> "LabelMap":
        """From the class key (see :func:`class_key`) of every training clip; sorted, so stable."""
        return cls(classes=sorted({class_name(*k) for k in keys}))

    def __len__(self) -> int:
        return len(self.classes)

    def index(self, *parts: str) -> int:
        name = class_name(*parts)
        try:
            return self._lookup[name]
        except KeyError:
            raise KeyError(f"class {name!r} is not in the model's label map ({len(self)} classes)") from None

    @property
    def _lookup(self) -> dict[str, int]:
        if "_cache" not in self.__dict__:
            self.__dict__["_cache"] = {c: i for i, c in enumerate(self.classes)}
        return self.__dict__["_cache"]
