"""Physically motivated sound models of nine machine types, with their faults.

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

Two more in the tune suite, each with a domain shift of its own kind:

- ``motor``: an induction motor (tonal and modulated): magnetic hum at twice the mains frequency and
  its harmonics, a rotor slot tone that follows the slip (the load), a cooling fan. Faults: broken
  rotor bar (hum and speed beating at twice the slip frequency), eccentricity (once-per-turn
  modulation of the magnetic forces: sidebands), broken fan blade (turbulence, a gap once per turn,
  a whistle). Shift: the installation (a new mounting), and the pole count (speed).
- ``press``: a stamping press (impulsive): a thud and a ringing die at every stroke, the flywheel's
  drive. Faults: cracked die (a longer, beating ring), clutch slip (late, wandering impacts after a
  squeal), worn guides (knocks where the ram turns). Shift: another microphone (its response and
  self-noise), and the blank's thickness and stroke rate.

Three more, of other physics and with other kinds of domain shift (the confirm suite, see
``generate.SUITES``; nothing is ever chosen on them):

- ``valve``: a solenoid valve cycling open and shut (impulsive: actuation clicks, flow hiss
  while open). Faults: sticking (a late, doubled opening with a scrape), seat leak (faint hiss
  while shut), chatter (bouncing closure). Shift: the installation (pipework, mounting).
- ``transformer``: magnetostriction hum at twice the mains frequency and its even harmonics,
  cooling fans at high load (tonal). Faults: loose core (rattling buzz, a clipped hum), partial
  discharge (crackle bursts), DC bias (odd mains harmonics). Shift: load and an outdoor
  background (gusty wind).
- ``conveyor``: idler rollers' broadband rumble modulated at their rates, a belt joint slapping
  once per belt turn (modulated broadband). Faults: a dry roller bearing (wandering squeal), belt
  misalignment (edge rub once per belt turn), a damaged joint (a doubled, harder slap). Shift:
  belt speed.

``shift`` names what else, besides the attribute values, differs in the target domain:
``background`` (factory hum and colour), ``outdoor`` (wind), ``installation`` (the transfer path
from machine to microphone), ``microphone`` (another microphone); the rendering of these lives in
``generate``.
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
    shift: tuple[str, ...] = ("background",)

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


class Valve(Machine):
    name = "valve"
    attributes = (Attribute("cycles", (40, 60), (90,)), Attribute("pressure", (2, 4), (7,)))
    anomalies = ("sticking", "seat_leak", "chatter")
    shift = ("installation",)

    def instance(self, rng):
        return {"body": rng.uniform(1800, 3500), "seat": rng.uniform(4000, 6000), "flow_fc": rng.uniform(1500, 3000),
                "duty": rng.uniform(0.35, 0.55), "leak_fc": rng.uniform(6000, 7200)}

    def render(self, rng, inst, attrs, faults, strength, T, sr):
        n = len(faults)
        rate = attrs["cycles"] / 60.0  # open-shut cycles per second
        t = np.arange(T, dtype=np.float32) / sr
        start = rng.uniform(0, 1, (n, 1)).astype(np.float32)
        cycle_pos = np.mod(col(rate) * t + start, 1.0)  # 0 at opening
        sticking = faults == "sticking"
        delay = np.where(sticking, 0.04 + 0.08 * strength, 0.0)  # seconds the plunger hangs
        opening = np.clip((cycle_pos / col(rate) - col(delay)) * 40.0, 0, 1)
        is_open = opening * (cycle_pos < inst["duty"])
        pressure = col(attrs["pressure"] / 4.0)
        flow = dsp.shaped_noise(rng, n, T, sr, dsp.bandpass_env(inst["flow_fc"] * np.sqrt(pressure[:, 0]),
                                                                np.full(n, 900.0)))
        x = 0.5 * np.sqrt(pressure) * flow * is_open
        # actuation: an opening click (late when sticking) and a louder shutting click each cycle
        previous = np.concatenate([cycle_pos[:, :1], cycle_pos[:, :-1]], axis=1)
        open_at = ((cycle_pos < previous) * np.exp(0.1 * rng.standard_normal((n, T)))).astype(np.float32)
        open_at = np.stack([np.roll(c, int(d * sr)) for c, d in zip(open_at, delay)])
        shut_at = (((cycle_pos >= inst["duty"]) & (previous < inst["duty"])) *
                   np.exp(0.1 * rng.standard_normal((n, T)))).astype(np.float32)
        chatter = faults == "chatter"
        if chatter.any():  # the plunger bounces on its seat: decaying repeats of the shutting click
            bounces = sum((0.6 * strength / (k + 1)) * np.roll(shut_at[chatter], int(0.012 * (k + 1) * sr), axis=1)
                          for k in range(4))
            shut_at[chatter] += bounces
        clicks = 0.6 * open_at + 1.0 * shut_at
        x += 3.0 * dsp.unit_rms(dsp.convolve(clicks, dsp.resonance(np.full(n, inst["body"]), np.full(n, 0.004), sr)))
        x += 0.1 * dsp.shaped_noise(rng, n, T, sr, dsp.lowpass_env(np.full(n, 400.0)))
        if sticking.any():
            m = int(sticking.sum())
            scrape_win = np.exp(-((cycle_pos[sticking] / col(rate[sticking]) - col(delay[sticking]) / 2) /
                                  col(delay[sticking] / 3)) ** 2)
            scrape = dsp.shaped_noise(rng, m, T, sr, dsp.bandpass_env(np.full(m, inst["seat"]), np.full(m, 700.0)))
            x[sticking] += 0.4 * strength * scrape * scrape_win
        leak = faults == "seat_leak"
        if leak.any():
            m = int(leak.sum())
            hiss = dsp.shaped_noise(rng, m, T, sr, dsp.bandpass_env(np.full(m, inst["leak_fc"]), np.full(m, 500.0)))
            x[leak] += 0.12 * strength * np.sqrt(pressure[leak]) * hiss * (1 - is_open[leak])
        return dsp.unit_rms(x)


class Transformer(Machine):
    name = "transformer"
    attributes = (Attribute("load", (30, 50, 70), (95,)), Attribute("taps", (1, 2), (3,)))
    anomalies = ("loose_core", "partial_discharge", "dc_bias")
    shift = ("outdoor",)

    def instance(self, rng):
        return {"mains": float(rng.choice([50.0, 60.0])), "profile": _harmonic_profile(rng, 10, 0.9),
                "fan_fc": rng.uniform(600, 1200), "tank": rng.uniform(300, 700)}

    def render(self, rng, inst, attrs, faults, strength, T, sr):
        n = len(faults)
        load = col(attrs["load"] / 100.0)
        ph = dsp.phase(np.full((n, T), inst["mains"], np.float32), sr, rng)  # mains phase, locked
        amps = np.tile(inst["profile"], (n, 1))
        amps[:, 2:] *= col(0.5 + 0.15 * attrs["taps"])  # the tap setting shifts the flux, and the overtones
        amps[:, 4:] *= 0.2 + 2.0 * load  # winding forces of the load current add upper harmonics
        hum = dsp.harmonics(ph, amps, range(2, 21, 2), rng)  # twice mains and its even harmonics
        x = dsp.unit_rms(hum) * (0.7 + 0.6 * load)
        fans = dsp.shaped_noise(rng, n, T, sr, dsp.lowpass_env(np.full(n, inst["fan_fc"]), 2.5))
        x += np.clip(load - 0.45, 0, None) * 2.0 * fans  # cooling fans run at high load
        x += 0.1 * dsp.shaped_noise(rng, n, T, sr, dsp.lowpass_env(np.full(n, 3000.0)))
        loose = faults == "loose_core"
        if loose.any():  # laminations rattle: the hum clipped into a buzz rich in high harmonics
            buzz = np.clip(hum[loose] / np.abs(hum[loose]).max(axis=1, keepdims=True) * 4, -1, 1)
            buzz = dsp.convolve(buzz, dsp.resonance(np.full(int(loose.sum()), inst["tank"] * 4), np.full(
                int(loose.sum()), 0.002), sr))
            x[loose] += 0.06 * strength * dsp.unit_rms(buzz)
        pd = faults == "partial_discharge"
        if pd.any():  # crackle: short high-frequency bursts at random, more near the voltage peaks
            m = int(pd.sum())
            hits = dsp.event_train(rng, T, sr, np.full(m, 4 * inst["mains"]), np.full(m, 2e-3), 1.0, 0.15)
            hits *= np.abs(np.sin(ph[pd]))
            crackle = dsp.convolve(hits, dsp.resonance(rng.uniform(5000, 7000, m), np.full(m, 2e-4), sr))
            x[pd] += 0.08 * strength * dsp.unit_rms(crackle)
        bias = faults == "dc_bias"
        if bias.any():  # half-cycle saturation: odd harmonics of the mains join the even ones
            m = int(bias.sum())
            odd = dsp.harmonics(ph[bias], np.tile([1.0, 0.6, 0.4], (m, 1)).astype(np.float32), [1, 3, 5], rng)
            x[bias] += 0.1 * strength * odd
        return dsp.unit_rms(x)


class Conveyor(Machine):
    name = "conveyor"
    attributes = (Attribute("speed", (90, 120), (180,)), Attribute("load", (0, 50), (100,)))
    anomalies = ("roller_bearing", "misalignment", "damaged_joint")
    shift = ()  # the belt speed, and nothing else

    def instance(self, rng):
        return {"rollers": rng.uniform(0.09, 0.16, 4), "belt": rng.uniform(3.0, 8.0), "slap": rng.uniform(150, 400),
                "squeal": rng.uniform(2500, 4500), "drive": rng.uniform(12, 20), "rub_fc": rng.uniform(3000, 5000)}

    def render(self, rng, inst, attrs, faults, strength, T, sr):
        n = len(faults)
        v = attrs["speed"] / 60.0  # belt speed, m/s
        load = col(attrs["load"] / 100.0)
        rumble = np.zeros((n, T), np.float32)
        for d in inst["rollers"]:  # each idler roller's noise, modulated at its rotation rate
            ph = dsp.phase(np.repeat(col(v / (np.pi * d)), T, axis=1), sr, rng)
            centre = (600 + 2000 * d) * (0.4 + v / 2.5)  # friction noise rises with the belt speed
            band = dsp.shaped_noise(rng, n, T, sr, dsp.bandpass_env(centre, np.full(n, 500.0)))
            rumble += band * (1 + 0.5 * np.cos(ph))
        x = dsp.unit_rms(rumble) + (0.3 + 0.5 * load) * dsp.shaped_noise(rng, n, T, sr,
                                                                          dsp.lowpass_env(np.full(n, 150.0), 2.0))
        drive = dsp.phase(np.repeat(col(v * inst["drive"]), T, axis=1), sr, rng)  # the drive motor's shaft
        x += 0.3 * dsp.harmonics(drive, np.tile([1.0, 0.5, 0.3], (n, 1)).astype(np.float32), [1, 2, 4], rng)
        belt_rate = v / inst["belt"]
        damaged = faults == "damaged_joint"
        slaps = dsp.event_train(rng, T, sr, belt_rate * np.where(damaged, 2.0, 1.0), np.full(n, 2e-3), 0.1)
        slaps[damaged] *= 1 + strength
        x += 0.8 * dsp.unit_rms(dsp.convolve(slaps, dsp.resonance(np.full(n, inst["slap"]), np.full(n, 0.01), sr)))
        bearing = faults == "roller_bearing"
        if bearing.any():  # a dry bearing squeals, its pitch wandering with friction
            m = int(bearing.sum())
            pitch = inst["squeal"] * dsp.slow_wobble(rng, m, T, sr, np.full(m, 0.05))
            on = 0.5 + 0.5 * np.sin(2 * np.pi * col(rng.uniform(0.2, 0.6, m)) * np.arange(T) / sr)
            x[bearing] += 0.03 * strength * np.sin(dsp.phase(pitch, sr, rng)) * on
        misaligned = faults == "misalignment"
        if misaligned.any():  # the belt edge rubs the frame for part of every belt turn
            m = int(misaligned.sum())
            ph_belt = dsp.phase(np.repeat(col(belt_rate[misaligned]), T, axis=1), sr, rng)
            rub = dsp.shaped_noise(rng, m, T, sr, dsp.bandpass_env(np.full(m, inst["rub_fc"]), np.full(m, 1200.0)))
            x[misaligned] += 0.15 * strength * rub * dsp.pulse_window(ph_belt, 0.5)
        return dsp.unit_rms(x)


class Motor(Machine):
    name = "motor"
    attributes = (Attribute("load", (20, 50), (90,)), Attribute("poles", (4,), (2,)))
    anomalies = ("broken_bar", "eccentricity", "fan_blade")
    shift = ("installation",)

    def instance(self, rng):
        return {"mains": float(rng.choice([50.0, 60.0])), "bars": int(rng.integers(26, 44)),
                "hum": _harmonic_profile(rng, 4, 1.0), "blades": int(rng.integers(7, 12)),
                "fan_fc": rng.uniform(1500, 3000)}

    def render(self, rng, inst, attrs, faults, strength, T, sr):
        n = len(faults)
        load = attrs["load"] / 100.0
        slip = 0.005 + 0.04 * load  # the rotor lags the field more under load
        f_rot = col(2 * inst["mains"] / attrs["poles"] * (1 - slip)) * dsp.slow_wobble(rng, n, T, sr,
                                                                                       np.full(n, 0.0005))
        t = np.arange(T, dtype=np.float32) / sr
        current = np.ones((n, T), np.float32)  # the load current, which drives the magnetic forces
        broken = faults == "broken_bar"
        if broken.any():  # a broken rotor bar beats the current and the torque at twice the slip frequency
            beat = np.cos(2 * np.pi * col(2 * slip[broken] * inst["mains"]) * t)
            current[broken] += 0.8 * strength * beat
            f_rot[broken] *= 1 + 0.03 * strength * beat
        ph_rot = dsp.phase(f_rot, sr, rng)
        ph_mains = dsp.phase(np.full((n, T), inst["mains"], np.float32), sr, rng)
        hum = dsp.harmonics(ph_mains, np.tile(inst["hum"], (n, 1)) * col(0.4 + load), [2, 4, 6, 8], rng)
        slot = dsp.harmonics(ph_rot, np.full((n, 1), 0.5, np.float32), [inst["bars"]], rng)  # rotor slot tone
        eccentric = faults == "eccentricity"
        if eccentric.any():  # an air gap uneven around the rotor modulates the magnetic forces once per turn
            slot[eccentric] *= 1 + strength * np.cos(ph_rot[eccentric])
            hum[eccentric] *= 1 + 0.6 * strength * np.cos(ph_rot[eccentric])
        x = dsp.unit_rms(hum * current) + 0.5 * slot * current
        fan = dsp.shaped_noise(rng, n, T, sr, dsp.lowpass_env(np.full(n, inst["fan_fc"]), 2.0))
        fan *= 1 + 0.2 * np.cos(np.mod(ph_rot * inst["blades"], 2 * np.pi))
        lost = faults == "fan_blade"
        if lost.any():  # a broken cooling-fan blade: turbulent air, a gap in the blade passes once per turn, a whistle
            m = int(lost.sum())
            fan[lost] *= (1 + strength) * (1 - 0.5 * strength * dsp.pulse_window(ph_rot[lost], 0.4))
            fan[lost] += 0.4 * strength * dsp.harmonics(ph_rot[lost], np.full((m, 1), 1.0, np.float32),
                                                        [inst["blades"] - 1], rng)
        x += 0.25 * fan
        return dsp.unit_rms(x)


class Press(Machine):
    name = "press"
    attributes = (Attribute("thickness", (1, 2), (4,)), Attribute("strokes", (90, 120), (180,)))
    anomalies = ("cracked_die", "clutch_slip", "worn_guide")
    shift = ("microphone",)

    def instance(self, rng):
        return {"ring": rng.uniform(1200, 2600), "thud": rng.uniform(80, 160), "motor": rng.uniform(20, 30),
                "squeal": rng.uniform(1800, 3000), "guide": rng.uniform(400, 800)}

    def render(self, rng, inst, attrs, faults, strength, T, sr):
        n = len(faults)
        rate = attrs["strokes"] / 60.0
        thick = col(attrs["thickness"])
        t = np.arange(T, dtype=np.float32) / sr
        start = rng.uniform(0, 1, (n, 1)).astype(np.float32)
        stroke = np.mod(col(rate) * t + start, 1.0)  # 0 at the top of the stroke, the die closes at 0.5
        previous = np.concatenate([stroke[:, :1], stroke[:, :-1]], axis=1)
        slipping = faults == "clutch_slip"
        lag = np.where(slipping, 0.02 + 0.06 * strength, 0.0) * rng.uniform(0.5, 1.5, n)  # seconds, varies
        impact = ((stroke >= 0.5) & (previous < 0.5)).astype(np.float32) * np.exp(0.1 * rng.standard_normal((n, T)))
        impact = np.stack([np.roll(c, int(d * sr)) for c, d in zip(impact, lag)]).astype(np.float32)
        ring_decay = np.full(n, 0.015)
        cracked = faults == "cracked_die"
        ring_decay[cracked] *= 1 + 2.0 * strength  # a crack rings on
        # the blank's thickness: a deeper thud and a lower ring
        ring = dsp.convolve(impact, dsp.resonance(inst["ring"] / np.sqrt(attrs["thickness"]), ring_decay, sr, 0.2))
        if cracked.any():  # ... and splits the die's mode in two: a beating ring
            split = inst["ring"] / np.sqrt(attrs["thickness"][cracked]) * (1 + 0.03 * strength)
            ring[cracked] += dsp.convolve(impact[cracked], dsp.resonance(split, ring_decay[cracked], sr, 0.2))
        thud = dsp.convolve(impact, dsp.resonance(inst["thud"] / thick[:, 0] ** 0.3, np.full(n, 0.03), sr, 0.2))
        x = dsp.unit_rms(thud) * (0.5 + 0.3 * thick) + 0.6 * dsp.unit_rms(ring)
        motor = dsp.phase(np.full((n, T), inst["motor"], np.float32), sr, rng)  # the flywheel's drive
        x += 0.15 * dsp.harmonics(motor, np.tile([1.0, 0.5, 0.3], (n, 1)).astype(np.float32), [1, 2, 3], rng)
        x += 0.2 * dsp.shaped_noise(rng, n, T, sr, dsp.lowpass_env(np.full(n, 800.0)))
        if slipping.any():  # the slipping clutch squeals while it catches up
            m = int(slipping.sum())
            window = ((stroke[slipping] > 0.35) & (stroke[slipping] < 0.5)).astype(np.float32)
            squeal = np.sin(dsp.phase(inst["squeal"] * dsp.slow_wobble(rng, m, T, sr, np.full(m, 0.03)), sr, rng))
            x[slipping] += 0.15 * strength * squeal * window
        worn = faults == "worn_guide"
        if worn.any():  # the ram knocks in its worn guides as it turns back at the bottom and the top
            m = int(worn.sum())
            turns = (((stroke[worn] >= 0.55) & (previous[worn] < 0.55)) | (stroke[worn] < previous[worn]))
            knocks = dsp.convolve(turns.astype(np.float32), dsp.resonance(np.full(m, inst["guide"]),
                                                                          np.full(m, 0.004), sr))
            x[worn] += 0.5 * strength * dsp.unit_rms(knocks)
        return dsp.unit_rms(x)


MACHINES: dict[str, Machine] = {m.name: m for m in (Pump(), Gearbox(), Fan(), Compressor(), Valve(), Transformer(),
                                                    Conveyor(), Motor(), Press())}
