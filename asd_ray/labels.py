"""Auxiliary classes for training: machine type x section x attribute combination.

Built from the training data and saved with the model, so that scoring and resumed training use
the same class indices.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel


def class_name(machine: str, section: str, attribute_key: str) -> str:
    return f"{machine}|{section}|{attribute_key}"


class LabelMap(BaseModel):
    classes: list[str]

    @classmethod
    def from_clips(cls, keys: Iterable[tuple[str, str, str]]) -> "LabelMap":
        """From ``(machine, section, attribute_key)`` of every training clip; sorted, so stable."""
        return cls(classes=sorted({class_name(*k) for k in keys}))

    def __len__(self) -> int:
        return len(self.classes)

    def index(self, machine: str, section: str, attribute_key: str) -> int:
        name = class_name(machine, section, attribute_key)
        try:
            return self._lookup[name]
        except KeyError:
            raise KeyError(f"class {name!r} is not in the model's label map ({len(self)} classes)") from None

    @property
    def _lookup(self) -> dict[str, int]:
        if "_cache" not in self.__dict__:
            self.__dict__["_cache"] = {c: i for i, c in enumerate(self.classes)}
        return self.__dict__["_cache"]
