"""The published folder layouts of machine-sound datasets, read from a file's path alone.

``dcase2022``: DCASE 2022-2025 dev and eval (``<machine>/{train,test}/section_XX_<domain>_<split>_
<label>_NNNN[_<attr>_<value>...].wav``, ``noAttribute`` for none; eval test ``section_XX_NNNN.wav``).
``dcase2021``: DCASE 2021, MIMII DUE and ToyADMOS2 as DCASE 2021 published them (test clips in
``source_test/`` and ``target_test/``; eval test ``section_XX_<domain>_test_NNNN.wav``).
``dcase2020``: DCASE 2020 (``<machine>/{train,test}/{normal|anomaly}_id_XX_NNNNNNNN.wav``, ``id_XX``
as the section; eval test ``id_XX_NNNNNNNN.wav``; one domain: source).
``mimii``: MIMII (``[<snr>_dB_]<machine>/<machine>/id_XX/{normal,abnormal}/NNNNNNNN.wav``, 8
channels: channel 0 kept, as DCASE 2020 did). MIMII has no train/test split: per machine, SNR and
id, every abnormal clip and as many normal clips go to test (DCASE 2020's recipe; the normal
clips chosen by a hash of their names, so a re-run chooses the same), the other normal clips to
train. The SNR, where the folder names one, is an attribute (``snr``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

LAYOUTS = {
    "dcase2022": "<machine>/{train,test}/section_XX_{source|target}_{train|test}_{normal|anomaly}_NNNN[_<attr>_<value>"
                 "...].wav, or <machine>/test/section_XX_NNNN.wav (DCASE 2022-2025)",
    "dcase2021": "<machine>/{train,source_test,target_test}/section_XX_{source|target}_{train|test}_"
                 "{normal|anomaly}_NNNN[_...].wav, or .../section_XX_{source|target}_test_NNNN.wav "
                 "(DCASE 2021, MIMII DUE, ToyADMOS2)",
    "dcase2020": "<machine>/{train,test}/{normal|anomaly}_id_XX_NNNNNNNN.wav, or <machine>/test/id_XX_NNNNNNNN.wav "
                 "(DCASE 2020)",
    "mimii": "[<snr>_dB_]<machine>/<machine>/id_XX/{normal,abnormal}/NNNNNNNN.wav (MIMII)",
}

LABELLED = re.compile(r"^section_(\d{2})_(source|target)_(train|test)_(normal|anomaly)_(\d+)(?:_(.+))?$")
UNLABELLED = re.compile(r"^section_(\d{2})_(\d+)$")
DOMAIN_ONLY = re.compile(r"^section_(\d{2})_(source|target)_test_(\d+)$")
DCASE2020 = re.compile(r"^(normal|anomaly)_id_(\d{2})_(\d+)$")
DCASE2020_EVAL = re.compile(r"^id_(\d{2})_(\d+)$")
MIMII_SNR = re.compile(r"^(-?\d+)_dB_(.+)$")


class BadName(ValueError):
    """A path that no known layout explains, or one that breaks its layout's rules."""


@dataclass
class Clip:
    """What a path says of its clip."""

    layout: str
    machine: str
    split: str | None  # None: MIMII, assigned with the other clips of its group (:func:`assign_splits`)
    stem: str  # the clip's name in its id: <machine>/<split>/<stem>
    section: str
    domain: str | None
    label: str | None
    attributes: dict[str, str] = field(default_factory=dict)
    channel: int | None = None  # of a multi-channel file, the one kept
    group: str = ""  # MIMII: machine, SNR and id, the unit its test set is drawn from


def identify(parts: list[str]) -> Clip:
    """A path relative to the dataset root, split at '/', without the file's extension."""
    stem = parts[-1]
    if len(parts) >= 3 and parts[-2] in ("train", "test"):
        machine, folder = parts[-3], parts[-2]
        if LABELLED.match(stem):
            return _dcase(stem, machine, folder, "dcase2022")
        m = UNLABELLED.match(stem)
        if m and folder == "test":
            return Clip("dcase2022", machine, "test", stem, m.group(1), None, None)
        m = DCASE2020.match(stem)
        if m:
            label, section, _ = m.groups()
            return Clip("dcase2020", machine, folder, stem, section, "source", label)
        m = DCASE2020_EVAL.match(stem)
        if m and folder == "test":
            return Clip("dcase2020", machine, "test", stem, m.group(1), "source", None)
        raise BadName(_explain(stem))
    if len(parts) >= 3 and parts[-2] in ("source_test", "target_test"):
        machine, domain = parts[-3], parts[-2].split("_")[0]
        m = DOMAIN_ONLY.match(stem)
        if m:
            if m.group(2) != domain:
                raise BadName(f"name says domain '{m.group(2)}' but the file is in the '{parts[-2]}' folder")
            return Clip("dcase2021", machine, "test", stem, m.group(1), domain, None)
        if LABELLED.match(stem):
            clip = _dcase(stem, machine, "test", "dcase2021")
            if clip.domain != domain:
                raise BadName(f"name says domain '{clip.domain}' but the file is in the '{parts[-2]}' folder")
            return clip
    if len(parts) >= 4 and parts[-2] in ("normal", "abnormal") and re.fullmatch(r"id_\d{2}", parts[-3]):
        machine, section = parts[-4], parts[-3][3:]
        label = "normal" if parts[-2] == "normal" else "anomaly"
        snr = MIMII_SNR.match(parts[-5]) if len(parts) >= 5 else None
        attributes = {"snr": f"{snr.group(1)}dB"} if snr else {}
        tag = f"_snr_{snr.group(1)}dB" if snr else ""
        return Clip("mimii", machine, None, f"{label}_id_{section}{tag}_{stem}", section, "source", label,
                    attributes, channel=0, group=f"{machine}|{tag}|{section}")
    raise BadName("not in a layout understood here; expected one of: "
                  + "; ".join(f"{name}: {text}" for name, text in LAYOUTS.items()))


def _dcase(stem: str, machine: str, folder: str, layout: str) -> Clip:
    section, domain, name_split, label, _, rest = LABELLED.match(stem).groups()
    if name_split != folder:
        raise BadName(f"name says split '{name_split}' but the file is in the '{folder}' folder")
    attributes = {}
    if rest and rest != "noAttribute":
        tokens = rest.split("_")
        if len(tokens) % 2:
            raise BadName(f"attributes '{rest}' are not <name>_<value> pairs")
        attributes = dict(zip(tokens[::2], tokens[1::2]))
    return Clip(layout, machine, folder, stem, section, domain, label, attributes)


def _explain(stem: str) -> str:
    return (f"unparseable name '{stem}': expected section_XX_{{source|target}}_{{train|test}}_{{normal|anomaly}}_"
            f"NNNN[_<attr>_<value>...] (or section_XX_NNNN for unlabelled test clips; DCASE 2020: "
            f"{{normal|anomaly}}_id_XX_NNNNNNNN, or id_XX_NNNNNNNN)")


def assign_splits(clips: list[Clip]) -> None:
    """MIMII clips get their split: per group every anomaly and as many normal clips (the ones
    with the smallest name hashes) go to test, the rest to train."""
    groups: dict[str, list[Clip]] = {}
    for c in clips:
        if c.split is None:
            groups.setdefault(c.group, []).append(c)
    for members in groups.values():
        anomalies = [c for c in members if c.label == "anomaly"]
        normal = sorted((c for c in members if c.label == "normal"),
                        key=lambda c: hashlib.sha1(c.stem.encode()).hexdigest())
        for c in anomalies + normal[:len(anomalies)]:
            c.split = "test"
        for c in normal[len(anomalies):]:
            c.split = "train"
