"""General MIDI routing: which loaded preset (and timbre) plays a channel's bank and program.

FluidSynth with a GM SoundFont is the reference: whatever a GM file gets from it, it gets here with
no options. Channel 10 plays the drum kit (a program change there picks the kit of that program,
else the default kit; with no kit loaded it stays silent, as FluidSynth's does without a bank-128
preset); the other channels play the installed preset of the program's GM family (`synth.gm`):

1. `program_map` {program: preset name} first (the user's choice, any bank);
2. a single-instrument preset whose own program is the program (`gm.preset_program`);
3. a family preset (manifest `timbres`) with a timbre of that program;
4. the rest of the program's routing group (its family; Strings with Ensemble): the preset or timbre
   whose own program is nearest (ties: the lower program, then the name), as `gm.routing` does;
5. the nearest installed family by sound (`gm.fallback_families`), at its first program that step
   4 covers (GM lists each family's main instrument first); the route says so in `fallback`;
6. last resort, the default pitched preset (`piano` when loaded); with no pitched preset, silence.

Banks, as FluidSynth's default ("gs") bank-select style reads them: the MSB (CC 0) is the bank and
the LSB (CC 32) is ignored. A single-instrument preset plays its program in every bank (FluidSynth
falls back to bank 0 for a bank the SoundFont lacks). A family preset's bank MSB n picks its n-th
source (sources in the order their first timbre is listed; MSB 0 the first), a source it lacks falls
back to the first; among that source's timbres of the program, the one whose SoundFont `bank` is the
MSB wins, else the bank-0 one. Precedence: a single-instrument preset of the exact program keeps
bank 0 (`piano` stays the acoustic grand on program 0), and bank MSB >= 1 on that program reaches
the family preset's timbres. Bank 128 (an XG drum MSB, see `bank_select`) plays the kit on any channel.
After a GM/GM2/GS/XG reset FluidSynth changes its bank-select style: `bank_select` gives the bank
to pass for each (`synth.midifile.SYSRESET`'s `a`).

Everything is computed in `__init__`; `resolve` is a list or dict lookup (it runs in the audio
thread on a program change).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from synth import gm
from synth.errors import UserError

DRUM_CHANNEL = gm.DRUM_CHANNEL
DRUM_BANK = gm.DRUM_BANK
# SYSRESET's `a` (midifile: 1 GM, 2 GM2, 3 GS, 4 XG; 0 before any) -> FluidSynth 2.3's bank-select style.
RESET_STYLES = {0: "gs", 1: "gm", 2: "gm", 3: "gs", 4: "xg"}


@dataclass(frozen=True)
class Route:
    preset: int          # index into the presets list given to Router
    timbre: int | None   # index into presets[preset].timbres for a family preset, else None
    fallback: str        # "" when the program's own family is installed; else a short reason


def bank_select(style: str, msb: int, lsb: int) -> int:
    """The bank MSB to pass `Router.resolve` for a channel's CC 0 / CC 32 under FluidSynth's bank-select
    `style` ("gs" the default: the MSB; "gm", after a GM or GM2 System On: always 0; "xg", after an XG
    System On: MSB >= 120 is the drum bank 128, else the LSB is the bank)."""
    if style == "gm":
        return 0
    if style == "xg":
        return DRUM_BANK if msb >= 120 else lsb
    return msb


class Router:
    """GM routing over a fixed list of loaded presets (see the module docstring).

    `program_map` {GM program: preset name} overrides the routing of those programs on every channel
    but 10; `drums` names the kit channel 10 plays whatever its program (default: the kit of the
    program, else the first kit loaded). A bad name or program is a one-line `UserError`."""

    def __init__(self, presets: Sequence, program_map: Mapping[int, str] | None = None, drums: str | None = None):
        self.presets = list(presets)
        if not self.presets:
            raise UserError("GM routing needs at least one preset; pass --preset NAME (see `python -m synth presets`)")
        self._index: dict[str, int] = {}
        for i, p in enumerate(self.presets):
            self._index.setdefault(p.name, i)
        self._map = self._check_map(program_map or {})
        self._kits = [i for i, p in enumerate(self.presets) if p.is_drums]
        self._pitched = [i for i, p in enumerate(self.presets) if not p.is_drums]
        self._drums = self._check_drums(drums)
        self._own = self._own_programs()
        self._silent: dict[tuple[bool, int], str] = {}     # (drum?, program) -> why resolve says None
        self._kit_routes = [self._kit_route(prog) for prog in range(128)]
        direct = [self._direct(prog) for prog in range(128)]
        self._bank0: list[Route | None] = [self._melodic(prog, 0, direct) for prog in range(128)]
        self._bankn: list[Route | None] = [self._melodic(prog, None, direct) for prog in range(128)]
        self._banked: dict[tuple[int, int], Route | None] = {
            (prog, msb): self._melodic(prog, msb, direct) for prog in range(128) for msb in self._msbs(prog, direct)}

    # ---- the contract ---------------------------------------------------------------------------------
    def resolve(self, channel: int, bank_msb: int, bank_lsb: int, program: int) -> Route | None:
        """The route of a program change (None: silent). `bank_lsb` is ignored, as by FluidSynth's
        default bank-select style; bank 128 plays the kit on any channel."""
        program &= 127
        if (channel & 15) == DRUM_CHANNEL or bank_msb == DRUM_BANK:
            return self._kit_routes[program]
        if bank_msb == 0:
            return self._bank0[program]
        r = self._banked.get((program, bank_msb), False)
        return self._bankn[program] if r is False else r

    def default(self, channel: int) -> Route | None:
        """A channel's route before any program change: program 0 bank 0 (channel 10: the kit)."""
        return self.resolve(channel, 0, 0, 0)

    def describe(self, uses: Iterable[tuple[int, int, int, int]]) -> list[str]:
        """Routing table lines, one per distinct (channel 0..15, bank MSB, bank LSB, program) of `uses`:
        the channel (1-16), bank, program and its GM name, the preset (preset/timbre), any fallback."""
        lines = []
        for ch, msb, lsb, prog in sorted(set(uses)):
            drum = (ch & 15) == DRUM_CHANNEL or msb == DRUM_BANK
            what = f"kit {prog} {gm.kit_label(prog)}" if drum else f"program {prog} {gm.PROGRAMS[prog & 127]}"
            bank = "" if drum or (msb == 0 and lsb == 0) else f" bank {msb}" + (f".{lsb}" if lsb else "")
            r = self.resolve(ch, msb, lsb, prog)
            if r is None:
                target, why = "silent", self._silent.get((drum, prog & 127), "")
            else:
                target, why = self.label(r), r.fallback
            lines.append(f"ch {ch + 1:>2}{bank} {what} -> {target}" + (f"  [fallback: {why}]" if why else ""))
        return lines

    # ---- helpers for render and play --------------------------------------------------------------------
    def label(self, route: Route) -> str:
        """`preset` or `preset/timbre`."""
        p = self.presets[route.preset]
        return p.name if route.timbre is None else f"{p.name}/{p.timbres[route.timbre].name}"

    def presets_for(self, uses: Iterable[tuple[int, int, int, int]]) -> set[int]:
        """Indices of the presets `uses` play, plus the default pitched preset, the program map's and --drums."""
        out = {r.preset for r in (self.resolve(*u) for u in uses) if r is not None}
        out |= set(self._map.values())
        if self._pitched:
            out.add(self._default_pitched())
        if self._drums is not None:
            out.add(self._drums)
        return out

    def program_map(self) -> dict[int, str]:
        """{program: preset name} of bank 0 on a melodic channel: the routing for an engine that only
        takes a program map (no banks, no timbres, channel 10 its first kit)."""
        return {prog: self.presets[r.preset].name for prog, r in enumerate(self._bank0) if r is not None}

    def kit(self) -> int | None:
        """The default kit's index (the kit channel 10 plays at program 0), or None without one."""
        r = self._kit_routes[0]
        return None if r is None else r.preset

    # ---- building the tables -----------------------------------------------------------------------------
    def _check_map(self, program_map: Mapping[int, str]) -> dict[int, int]:
        out = {}
        for prog, name in program_map.items():
            if isinstance(prog, bool) or not isinstance(prog, int) or not 0 <= prog <= 127:
                raise UserError(f"program map: program {prog!r} must be a GM program 0..127")
            if name not in self._index:
                raise UserError(f"program map {prog}={name}: preset {name!r} is not loaded (loaded: "
                                f"{', '.join(self._index)})")
            out[prog] = self._index[name]
        return out

    def _check_drums(self, drums: str | None) -> int | None:
        if drums is None:
            return None
        if drums not in self._index:
            raise UserError(f"--drums {drums}: preset {drums!r} is not loaded (loaded: {', '.join(self._index)})")
        i = self._index[drums]
        if not self.presets[i].is_drums:
            raise UserError(f"--drums {drums}: is a {self.presets[i].kind} preset, not a drum kit")
        return i

    def _own_programs(self) -> list[tuple[int, int, str, int, int | None]]:
        """Every pitched sound's own bank-0 program: (program, rank, name, preset, timbre or None); rank 0
        for a single-instrument preset, 1 for a family timbre (the first timbre of a family at a program)."""
        own = []
        for i in self._pitched:
            p = self.presets[i]
            if not p.timbres:
                prog = gm.preset_program(p)
                if prog is not None:
                    own.append((prog, 0, p.name, i, None))
                continue
            for prog in sorted({self._timbre_program(p, t) for t in p.timbres} - {None}):
                own.append((prog, 1, p.name, i, self._pick(i, prog, 0)))
        return own

    @staticmethod
    def _timbre_program(p, t) -> int | None:
        if t.bank == DRUM_BANK:
            return None
        return t.program if t.program is not None else gm.preset_program(p)

    def _pick(self, pi: int, prog: int, msb: int | None) -> int | None:
        """The timbre of family preset `pi` at `prog` for bank MSB `msb` (None: a bank with no source)."""
        p = self.presets[pi]
        ts = [k for k, t in enumerate(p.timbres) if self._timbre_program(p, t) == prog]
        if not ts:
            return None
        sources = list(dict.fromkeys(t.source for t in p.timbres))
        src = sources[msb] if msb is not None and 0 < msb < len(sources) else sources[0]
        pool = ([k for k in ts if p.timbres[k].source == src] or
                [k for k in ts if p.timbres[k].source == sources[0]] or ts)
        for want in ((msb,), (0, None)):
            for k in pool:
                if p.timbres[k].bank in want:
                    return k
        return pool[0]

    def _direct(self, prog: int) -> Route | None:
        """Bank 0 of `prog` from its own routing group (steps 2-4), or None when the group has nothing."""
        group = gm.group_programs(prog)
        rivals = [(abs(o - prog), o, rank, name, pi, ti) for o, rank, name, pi, ti in self._own if o in group]
        if not rivals:
            return None
        _, _, _, _, pi, ti = min(rivals)
        return Route(pi, ti, "")

    def _family_preset(self, prog: int) -> int | None:
        """The family preset with a timbre exactly at `prog` (the first by name), or None."""
        fams = sorted((name, pi) for o, rank, name, pi, _ in self._own if o == prog and rank == 1)
        return fams[0][1] if fams else None

    def _melodic(self, prog: int, msb: int | None, direct: list[Route | None]) -> Route | None:
        """Route of `prog` on a melodic channel at bank `msb` (0; None: any bank with no own entry)."""
        if prog in self._map:
            pi = self._map[prog]
            return Route(pi, self._pick(pi, prog, msb) if self.presets[pi].timbres else None, "")
        fam = self._family_preset(prog)
        if msb != 0 and fam is not None:
            return Route(fam, self._pick(fam, prog, msb), "")
        r = direct[prog]
        if r is not None:
            if r.timbre is not None and msb != 0:
                p = self.presets[r.preset]
                return Route(r.preset, self._pick(r.preset, self._timbre_program(p, p.timbres[r.timbre]), msb), "")
            return r
        return self._fallback(prog, direct)

    def _fallback(self, prog: int, direct: list[Route | None]) -> Route | None:
        """Steps 5-6: the nearest installed family by `gm.fallback_families`, else the default preset."""
        fam = gm.FAMILIES[gm.family_of(prog)]
        for f in gm.fallback_families(prog):
            covered = [q for q in range(8 * f, 8 * f + 8) if direct[q] is not None]
            if covered:
                r = direct[covered[0]]      # GM lists each family's main instrument first
                return Route(r.preset, r.timbre,
                             f"{fam}: none installed -> {self.label(r)} ({gm.FAMILIES[f]}, nearest family)")
        if not self._pitched:
            self._silent[(False, prog)] = "no pitched preset loaded -> silent"
            return None
        d = self._default_pitched()
        return Route(d, None, f"{fam}: none installed -> {self.presets[d].name} (default preset)")

    def _default_pitched(self) -> int:
        """`piano` when loaded, else the first single-instrument preset of program 0, else the first pitched."""
        if "piano" in self._index and not self.presets[self._index["piano"]].is_drums:
            return self._index["piano"]
        zero = [pi for o, rank, _, pi, _ in self._own if o == 0 and rank == 0]
        return zero[0] if zero else self._pitched[0]

    def _msbs(self, prog: int, direct: list[Route | None]) -> set[int]:
        """Bank MSBs >= 1 that can reach a timbre other than the bank-0 route's at `prog`."""
        pi = self._map.get(prog)
        if pi is None:
            pi = self._family_preset(prog)
        if pi is None and direct[prog] is not None and direct[prog].timbre is not None:
            pi = direct[prog].preset
        if pi is None or not self.presets[pi].timbres:
            return set()
        p = self.presets[pi]
        return set(range(1, len({t.source for t in p.timbres}))) | {
            t.bank for t in p.timbres if t.bank is not None and 1 <= t.bank <= 127}

    def _kit_route(self, prog: int) -> Route | None:
        """Channel 10 at `prog`: --drums, else the kit of that program, else the default (first) kit."""
        if self._drums is not None:
            return Route(self._drums, None, "")
        if not self._kits:
            self._silent[(True, prog)] = "no drum kit loaded -> silent"
            return None
        own = [i for i in self._kits if gm.kit_program(self.presets[i]) == prog]
        if own:
            return Route(own[0], None, "")
        d = self._kits[0]
        return Route(d, None, f"{gm.kit_label(prog)}: none installed -> {self.presets[d].name} (default kit)")


def scan_uses(events) -> list[tuple[int, int, int, int]]:
    """The (channel, bank, 0, program) routes a `synth.midifile.MidiEvents` plays notes with, in the
    banks `Router.resolve` takes (`bank_select` after each reset sysex; a bank select takes effect at
    the next program change, a reset sends every channel back to program 0 bank 0)."""
    import numpy as np

    from synth.midifile import CONTROL, NOTE_ON, PROGRAM, SYSRESET

    kind, chan, a, b = events.kind, events.channel, events.a, events.b
    is_bank = (kind == CONTROL) & ((a == 0) | (a == 32))
    resets = kind == SYSRESET
    uses: set[tuple[int, int, int, int]] = set()
    for c in range(16):
        on_c = chan == c
        notes = np.nonzero(on_c & (kind == NOTE_ON))[0]
        if not len(notes):
            continue
        starts, keys = [-1], [(c, 0, 0, 0)]
        msb = lsb = 0
        style = "gs"
        for i in np.nonzero((on_c & ((kind == PROGRAM) | is_bank)) | resets)[0].tolist():
            k = int(kind[i])
            if k == SYSRESET:
                style, msb, lsb = RESET_STYLES.get(int(a[i]), "gs"), 0, 0
                starts.append(i)
                keys.append((c, 0, 0, 0))
            elif k == CONTROL:
                msb, lsb = (int(b[i]), lsb) if a[i] == 0 else (msb, int(b[i]))
            else:
                starts.append(i)
                keys.append((c, bank_select(style, msb, lsb), 0, int(a[i])))
        seg = np.searchsorted(np.asarray(starts), notes, side="right") - 1
        uses.update(keys[s] for s in set(seg.tolist()))   # (np.unique would import numpy.ma: 30 ms)
    return sorted(uses)
