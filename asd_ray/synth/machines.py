"""Physically motivated sound models of four machine types, with their faults.

Each model renders a batch of clips of one section (one physical machine instance, whose
constants come from ``instance``) under per-clip operating conditions (attributes) and an
optional fault per clip. ``strength`` scales every fault (the difficulty knob). Outputs have unit
RMS: loudness is set later, at random, so that no fault can be found by level alone.

- ``pump``: rotating machine, shaft harmonics of the speed, impeller vane-pass tone growing with
  load, flow noise. Faults: outer-race bearing defect (resonance-exciting impulses at the
  ball-pass frequency, modulated by the load zone), imbalance (1x growth and 1x amplitude
  modulation), mechanical looseness (half-order subharmonics and rattling impacts).
- ``gearbox``: gear-mesh tone at teeth x shaft speed with harmonics and shaft sidebands. Faults:
  cracked tooth (once-per-revolution mesh modulation and impact), whine (a non-harmonic tone near
  the mesh), pitch drift (slow, large speed drift).
- ``fan``: blade-pass tones and speed-dependent turbulence. Faults: imbalance, a damaged blade
  (shaft orders around blade pass), rub (high-frequency scraping once per revolution).
- ``compressor``: reciprocating; every stroke a low thump and a valve click whose timing depends
  on discharge pressure. Faults: valve leak (hiss during compression), timing jitter, knock.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asd_ray.synth import dsp
from asd_ray.synth.dsp import col


@dataclass(frozen=True)
class Attribute:
    name: str
    source: tuple[int, ...]
    target: tuple[int, ...]


class Machine:
    name: str
    attributes: tuple[Attribute, ...]
    anomalies: tuple[str, ...]

    def instance(self, rng: np.random.Generator) -> dict:
        raise NotImplementedError

    def render(self, rng: np.random.Generator, inst: dict, attrs: dict[str, np.ndarray], faults: np.ndarray,
               strength: float, T: int, sr: int) -> np.ndarray:
        raise NotImplementedError


def _harmonic_profile(rng, count: int, slope: float) -> np.ndarray:
    return (np.arange(1, count + 1) ** -slope * rng.uniform(0.4, 1.0, count)).astype(np.float32)


class Pump(Machine):
    name = "pump"
    attributes = (Attribute("speed", (1200, 1500, 1800), (2400,)), Attribute("load", (40, 60), (80,)))
    anomalies = ("bearing", "imbalance", "looseness")

    def instance(self, rng):
        return {"profile": _harmonic_profile(rng, 8, 1.2), "vanes": int(rng.integers(5, 8)),
                "bpfo": rng.uniform(3.1, 4.6), "res": rng.uniform(2500, 4500), "flow_fc": rng.uniform(300, 700)}

    def render(self, rng, inst, attrs, faults, strength, T, sr):
        n = len(faults)
        load = attrs["load"] / 100.0
        f_rot = col(attrs["speed"] / 60.0) * dsp.slow_wobble(rng, n, T, sr, np.full(n, 0.002))
        ph = dsp.phase(f_rot, sr, rng)
        amps = np.tile(inst["profile"], (n, 1))
        imbalance = faults == "imbalance"
        amps[imbalance, 0] *= 1 + 1.2 * strength
        x = dsp.harmonics(ph, amps, range(1, 9), rng)
        x += 0.6 * col(load) * dsp.harmonics(ph, np.ones((n, 1), np.float32), [inst["vanes"]], rng)
        x = dsp.unit_rms(x) + 0.5 * dsp.shaped_noise(rng, n, T, sr, dsp.lowpass_env(inst["flow_fc"] * (0.5 + load)))
        if imbalance.any():
            x[imbalance] *= 1 + 0.25 * strength * np.cos(ph[imbalance])
        bearing = faults == "bearing"
        if bearing.any():
            m = int(bearing.sum())
            rate = attrs["speed"][bearing] / 60.0 * inst["bpfo"]
            hits = dsp.event_train(rng, T, sr, rate, np.full(m, 2e-4), 0.2)
            hits *= 0.5 + 0.5 * np.cos(ph[bearing])  # load zone: impacts strongest once per turn
            ring = dsp.convolve(hits, dsp.resonance(np.full(m, inst["res"]), np.full(m, 0.0015), sr))
            x[bearing] += 0.35 * strength * dsp.unit_rms(ring)
        loose = faults == "looseness"
        if loose.any():
            m = int(loose.sum())
            sub = dsp.harmonics(ph[loose], np.tile([0.3, 0.2, 0.1], (m, 1)).astype(np.float32), [0.5, 1.5, 2.5], rng)
            rattle = dsp.event_train(rng, T, sr, attrs["speed"][loose] / 60.0, np.full(m, 3e-3), 0.6, 0.6)
            rattle = dsp.convolve(rattle, dsp.resonance(np.full(m, 900.0), np.full(m, 0.004), sr))
            x[loose] += strength * (0.4 * sub + 0.25 * dsp.unit_rms(rattle))
        return dsp.unit_rms(x)


class Gearbox(Machine):
    name = "gearbox"
    attributes = (Attribute("speed", (900, 1100), (1300,)), Attribute("load", (20, 40, 60), (90,)))
    anomalies = ("tooth_crack", "whine", "pitch_drift")

    def instance(self, rng):
        return {"teeth": int(rng.integers(17, 32)), "mesh": _harmonic_profile(rng, 3, 0.8),
                "side": rng.uniform(0.03, 0.08), "res": rng.uniform(1500, 3500), "ghost": rng.uniform(1.25, 1.45)}

    def render(self, rng, inst, attrs, faults, strength, T, sr):
        n = len(faults)
        load = attrs["load"] / 100.0
        depth = np.full(n, 0.003)
        drift = faults == "pitch_drift"
        depth[drift] += 0.02 * strength
        f_rot = col(attrs["speed"] / 60.0) * dsp.slow_wobble(rng, n, T, sr, depth)
        ph_shaft = dsp.phase(f_rot, sr, rng)
        ph_mesh = np.mod(ph_shaft * inst["teeth"], 2 * np.pi)
        mesh_amps = np.tile(inst["mesh"], (n, 1)) * col(0.5 + load)
        mesh = dsp.harmonics(ph_mesh, mesh_amps, [1, 2, 3], rng)
        modulation = 1 + inst["side"] * np.cos(ph_shaft)
        crack = faults == "tooth_crack"
        if crack.any():
            modulation[crack] += 0.6 * strength * dsp.pulse_window(ph_shaft[crack], 0.15)
        x = mesh * modulation
        x += 0.2 * dsp.harmonics(ph_shaft, np.tile([1.0, 0.5], (n, 1)).astype(np.float32), [1, 2], rng)
        x = dsp.unit_rms(x) + 0.35 * dsp.shaped_noise(rng, n, T, sr, dsp.lowpass_env(np.full(n, 2000.0), 1.5))
        whine = faults == "whine"
        if whine.any():
            ph_ghost = np.mod(ph_mesh[whine] * inst["ghost"], 2 * np.pi)
            x[whine] += 0.3 * strength * np.sin(ph_ghost)
        if crack.any():
            m = int(crack.sum())
            hits = dsp.event_train(rng, T, sr, attrs["speed"][crack] / 60.0, np.full(m, 1e-4), 0.1)
            x[crack] += 0.15 * strength * dsp.unit_rms(
                dsp.convolve(hits, dsp.resonance(np.full(m, inst["res"]), np.full(m, 0.002), sr)))
        return dsp.unit_rms(x)


class Fan(Machine):
    name = "fan"
    attributes = (Attribute("speed", (900, 1200), (1600,)), Attribute("airflow", (50, 70, 90), (30,)))
    anomalies = ("imbalance", "blade_damage", "rub")

    def instance(self, rng):
        return {"blades": int(rng.integers(5, 10)), "bpf": _harmonic_profile(rng, 4, 1.0),
                "turb": rng.uniform(2.0, 4.0), "rub_fc": rng.uniform(4500, 6500)}

    def render(self, rng, inst, attrs, faults, strength, T, sr):
        n = len(faults)
        B = inst["blades"]
        f_rot = col(attrs["speed"] / 60.0) * dsp.slow_wobble(rng, n, T, sr, np.full(n, 0.004))
        ph = dsp.phase(f_rot, sr, rng)
        tones = dsp.harmonics(ph, np.tile(inst["bpf"], (n, 1)), [B, 2 * B, 3 * B, 4 * B], rng)
        turb_fc = attrs["speed"] / 60.0 * B * inst["turb"]
        turb = dsp.shaped_noise(rng, n, T, sr, dsp.lowpass_env(turb_fc, 1.5))
        turb_level = 0.4 + 1.2 * col(attrs["airflow"] / 100.0)
        imbalance = faults == "imbalance"
        if imbalance.any():
            turb[imbalance] *= 1 + 0.3 * strength * np.cos(ph[imbalance])
        x = dsp.unit_rms(tones) + turb_level * turb
        if imbalance.any():
            x[imbalance] += 0.35 * strength * np.sin(ph[imbalance])
        damaged = faults == "blade_damage"
        if damaged.any():
            m = int(damaged.sum())
            orders = [B - 2, B - 1, B + 1, B + 2]
            x[damaged] += 0.3 * strength * dsp.harmonics(ph[damaged], np.full((m, 4), 0.5, np.float32), orders, rng)
        rub = faults == "rub"
        if rub.any():
            m = int(rub.sum())
            hiss = dsp.shaped_noise(rng, m, T, sr, dsp.bandpass_env(np.full(m, inst["rub_fc"]), np.full(m, 600.0)))
            x[rub] += 0.4 * strength * hiss * dsp.pulse_window(ph[rub], 0.3)
        return dsp.unit_rms(x)


class Compressor(Machine):
    name = "compressor"
    attributes = (Attribute("speed", (600, 750), (900,)), Attribute("pressure", (6, 8), (10,)))
    anomalies = ("valve_leak", "timing_jitter", "knock")

    def instance(self, rng):
        return {"click": rng.uniform(2000, 5000), "thump": rng.uniform(60, 150), "knock": rng.uniform(700, 1200),
                "leak_fc": rng.uniform(5000, 7000)}

    def render(self, rng, inst, attrs, faults, strength, T, sr):
        n = len(faults)
        rate = attrs["speed"] / 60.0
        jitter = np.full(n, 3e-4)
        jittery = faults == "timing_jitter"
        jitter[jittery] += 4e-3 * strength
        thumps = dsp.event_train(rng, T, sr, rate, np.full(n, 2e-4), 0.05)
        x = dsp.convolve(thumps, dsp.resonance(np.full(n, inst["thump"]), np.full(n, 0.02), sr, 0.12))
        # the discharge valve opens later in the stroke at higher pressure
        delay = (0.15 + 0.03 * attrs["pressure"]) / rate
        clicks = dsp.event_train(rng, T, sr, rate, jitter, 0.1 + 0.3 * jittery * strength)
        shift = np.round(delay * sr).astype(int)
        clicks = np.stack([np.roll(c, s) for c, s in zip(clicks, shift)])
        x = dsp.unit_rms(x) + 0.8 * dsp.unit_rms(
            dsp.convolve(clicks, dsp.resonance(np.full(n, inst["click"]), np.full(n, 0.003), sr)))
        x += 0.25 * dsp.shaped_noise(rng, n, T, sr, dsp.lowpass_env(np.full(n, 1500.0)))
        leak = faults == "valve_leak"
        if leak.any():
            m = int(leak.sum())
            t = np.arange(T, dtype=np.float32) / sr
            cycle = 0.5 + 0.5 * np.sin(2 * np.pi * col(rate[leak]) * t)
            hiss = dsp.shaped_noise(rng, m, T, sr, dsp.bandpass_env(np.full(m, inst["leak_fc"]), np.full(m, 800.0)))
            x[leak] += 0.25 * strength * hiss * cycle
        knock = faults == "knock"
        if knock.any():
            m = int(knock.sum())
            hits = dsp.event_train(rng, T, sr, rate[knock] / 3.0, np.full(m, 1e-3), 0.3)
            x[knock] += 0.5 * strength * dsp.unit_rms(
                dsp.convolve(hits, dsp.resonance(np.full(m, inst["knock"]), np.full(m, 0.006), sr)))
        return dsp.unit_rms(x)


MACHINES: dict[str, Machine] = {m.name: m for m in (Pump(), Gearbox(), Fan(), Compressor())}
