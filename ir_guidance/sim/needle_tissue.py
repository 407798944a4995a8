"""Axial and lateral forces on the needle as it goes through the forearm phantom (ROS-free).

The model follows Okamura, Simone & O'Leary 2004 ("Force modeling for needle insertion
into soft tissue", IEEE Trans. Biomed. Eng. 51(10):1707-1716): the force resisting
insertion is the sum of three parts,

    f_axial = f_stiffness + f_friction + f_cutting

- **stiffness** of a membrane the tip presses on before it is punctured (skin, the front
  wall of a vein, its back wall): a nonlinear spring in the membrane's deflection ``d``,
  ``f = k1 d + k2 d^2`` (the form Okamura 2004 fitted to the bovine liver capsule). The
  membrane punctures when ``f`` reaches its puncture force; the spring force is then gone
  at once (the "pop" a clinician feels) and the tip lands ``d`` deeper in the tissue.
- **friction** along the inserted shaft: Okamura's modified Karnopp model, Coulomb plus
  viscous per unit inserted length in each tissue, with a static (stick) band around zero
  velocity. It reverses sign when the needle is withdrawn.
- **cutting**: a constant force per tissue while the tip advances through it (Okamura
  2004 found the cutting force constant for a given tissue); zero while the tip presses
  on a membrane, stands still or is withdrawn.

Deflection is measured geometrically: ``d`` is how far the tip has gone, along the
needle axis, past the membrane's undeformed surface (the skin cylinder, a vein wall's
outer ellipse for the front wall, its inner ellipse for the back wall). For a static
phantom that is exactly the tip's displacement since first contact; when the vein rolls
or the arm drifts the membrane unloads or loads accordingly. Until a membrane is
punctured the tissue beyond it is pushed ahead of the tip, so the reported tip tissue is
the membrane's (SKIN or WALL), not the phantom's label at the tip.

Holes: a punctured membrane is remembered (the skin entry in the arm's frame, a vein
wall's in the vein's cross-section frame). While the shaft is through a hole the
membrane counts as punctured wherever the needle's line now meets it (the hole moves with
the needle); once withdrawn behind it, re-advancing within ``hole_radius_m`` of it
punctures nothing. Withdrawing the tip back out of the skin is the ``'exit'`` event.

Friction length: the model keeps a track of the tissue the tip cut through, per arc
length from the skin entry (exact for a straight insertion, cheaper than sampling the
shaft every step); a jump (the tip landing ``d`` deeper after a puncture, or a long
step) is filled by sampling ``Phantom.labels`` along it.

Rolling: a vein's front wall pressed off-centre acts as a wedge. With frictionless
contact the wall's reaction is along its outward normal ``m``, of magnitude
``N = f / max(m . -axis, min_contact_cosine)``; its horizontal part ``N m_x`` pushes the
vein sideways (``Phantom.roll_from_push``, with a first-order lag). The vein slides away,
which unloads the membrane, and may leave the needle's path altogether (the needle then
slips past it or only grazes its side wall), a real failure mode of venipuncture. A vein
stays displaced while the needle is in the tissue and relaxes back once it is withdrawn
from the skin.

Sources (docs/needle_tissue.md has the parameter table, saying which numbers are taken
from which source and which are assumed; the ranges quoted were not re-checked against
the papers' own tables for this module):
- Okamura, Simone & O'Leary 2004 (above): model structure.
- van Gerwen, Dankelman & van den Dobbelsteen 2012, "Needle-tissue interaction forces - A
  survey of experimental data", Med. Eng. Phys. 34(6):665-680: skin puncture forces for
  small (about 21 G) needles of roughly 1-2.5 N; forces grow with needle diameter.
- Saito & Togawa 2005, "Detection of needle puncture to blood vessel using puncture force
  measurement", Med. Biol. Eng. Comput. 43: a characteristic force peak when the needle
  pierces the vein wall (rabbit ear veins).
- Kobayashi et al. 2013, "Use of puncture force measurement to investigate the
  conditions of blood vessel needle insertion", Med. Eng. Phys. 35(5):684-689: the sudden
  decrease in reaction force at vein puncture (porcine jugular vein, 10-20 deg, 3 mm/s).
- de Boer, Steinbuch, Neerken & Kharin 2007, "Laboratory study on needle-tissue
  interaction: towards the development of an instrument for automatic venipuncture",
  J. Mech. Med. Biol., doi:10.1142/S0219519407002297: distinct peaks at skin and vein.
- Chen et al. 2020, "Deep learning robotic guidance for autonomous vascular access",
  Nature Machine Intelligence 2:104-115: force-sensed robotic venipuncture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from ir_guidance.sim.phantom import AIR, FAT, LUMEN, MUSCLE, SKIN, WALL, Phantom, PhantomState

SKIN_PUNCTURE = 'skin_puncture'
WALL_PUNCTURE = 'wall_puncture'
BACK_WALL_PUNCTURE = 'back_wall_puncture'
EXIT = 'exit'

# Contact kinds reported in NeedleForce.contact.
NO_CONTACT = ''
SKIN_CONTACT = 'skin'
WALL_CONTACT = 'wall'
BACK_WALL_CONTACT = 'back_wall'

_FRONT, _BACK = 0, 1
_AXIS_TOL = 1e-6            # |axis| must be 1 within this
_STEP_FILL_M = 2.5e-4       # shaft-track gaps longer than this are sampled from the phantom
_SAMPLE_M = 1.0e-4          # sampling pitch along the shaft for such gaps
_CACHE_DY_M = 1.0e-3        # vein geometry is refreshed when the tip's y moves this far
_CACHE_DROLL_M = 1.0e-4     # ... or the vein's roll changes this much
_SLOPE_DY_M = 1.0e-3        # finite-difference step for the vein's course along y


@dataclass(frozen=True)
class TissueParameters:
    """Per-tissue constants of the force model, SI units, for the reference needle gauge.

    Forces (puncture, cutting, friction) are for a needle of ``reference_gauge_mm`` outer
    diameter and are scaled linearly with the diameter of the modelled needle (van Gerwen
    et al. 2012: insertion forces grow with needle diameter; linear is an assumption).
    Membrane stiffnesses are not scaled.

    Sources and assumptions (see docs/needle_tissue.md for the full table):
    - skin_puncture_n = 1.5 N: inside the ~1-2.5 N range for ~21 G needles in human skin
      attributed to the van Gerwen et al. 2012 survey; the value itself is chosen.
    - wall_puncture_n = 0.5 N: inside the 0.3-0.8 N range taken for the vein-wall peak,
      which Saito & Togawa 2005, Kobayashi et al. 2013 and de Boer et al. 2007 report as a
      distinct peak smaller than the skin's, with a sudden drop; the value is chosen.
    - The two ranges above were not re-checked against the papers' own tables.
    - k1, k2: the form is Okamura 2004's; the numbers are assumed so that the skin
      punctures after 2.5 mm of tenting and the vein wall after 1.0 mm (plausible
      tenting before puncture, not fitted to data).
    - cutting and friction magnitudes: assumed, chosen so that the post-puncture force is
      a small fraction of the peak as in the published profiles (skin drop > 50 %), with
      near-zero cutting and friction in blood.
    - static_friction_ratio, stick_velocity_m_s: the Karnopp stick band (Okamura 2004's
      friction model); values assumed.
    - hole_radius_m, min_contact_cosine, roll_time_constant_s: modelling choices.
    """

    reference_gauge_mm: float = 0.8          # 21 G (nominal outer diameter 0.819 mm)
    # Membranes: f = k1 d + k2 d^2 until f reaches the puncture force.
    skin_k1_n_per_m: float = 200.0
    skin_k2_n_per_m2: float = 1.6e5
    skin_puncture_n: float = 1.5
    wall_k1_n_per_m: float = 150.0
    wall_k2_n_per_m2: float = 3.5e5
    wall_puncture_n: float = 0.5
    # Cutting force while the tip advances through each tissue.
    cutting_skin_n: float = 0.30
    cutting_fat_n: float = 0.05
    cutting_muscle_n: float = 0.25
    cutting_wall_n: float = 0.10
    cutting_lumen_n: float = 0.0
    # Kinetic (Coulomb) friction per metre of shaft in each tissue.
    friction_skin_n_per_m: float = 30.0
    friction_fat_n_per_m: float = 8.0
    friction_muscle_n_per_m: float = 25.0
    friction_wall_n_per_m: float = 20.0
    friction_lumen_n_per_m: float = 1.0
    # Viscous friction per metre of shaft, per m/s of needle speed.
    viscous_skin_ns_per_m2: float = 2000.0
    viscous_fat_ns_per_m2: float = 1000.0
    viscous_muscle_ns_per_m2: float = 2000.0
    viscous_wall_ns_per_m2: float = 2000.0
    viscous_lumen_ns_per_m2: float = 50.0
    # Karnopp stick band: |v| below this sticks, up to static_friction_ratio x Coulomb.
    static_friction_ratio: float = 1.2
    stick_velocity_m_s: float = 1.0e-4
    # A membrane already punctured within this distance is passed without a new puncture.
    hole_radius_m: float = 1.0e-3
    # Wedge reaction N = f / max(cos, min_contact_cosine): caps glancing contacts.
    min_contact_cosine: float = 0.5
    # First-order lag of the vein's sideways displacement under the needle's push.
    roll_time_constant_s: float = 0.02

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f'{f.name} must be finite and >= 0, got {value!r}')
        for name in ('reference_gauge_mm', 'skin_puncture_n', 'wall_puncture_n',
                     'stick_velocity_m_s', 'hole_radius_m', 'min_contact_cosine'):
            if getattr(self, name) <= 0:
                raise ValueError(f'{name} must be > 0')
        if self.skin_k1_n_per_m + self.skin_k2_n_per_m2 <= 0:
            raise ValueError('the skin membrane needs a stiffness (k1 or k2 > 0)')
        if self.wall_k1_n_per_m + self.wall_k2_n_per_m2 <= 0:
            raise ValueError('the vein-wall membrane needs a stiffness (k1 or k2 > 0)')
        if self.min_contact_cosine > 1:
            raise ValueError('min_contact_cosine must be <= 1')

    def puncture_deflection_m(self, membrane: str, gauge_mm: float | None = None) -> float:
        """Tenting ``d`` at which ``membrane`` ('skin' or 'wall') punctures for a gauge."""
        if membrane == 'skin':
            k1, k2, fp = self.skin_k1_n_per_m, self.skin_k2_n_per_m2, self.skin_puncture_n
        elif membrane == 'wall':
            k1, k2, fp = self.wall_k1_n_per_m, self.wall_k2_n_per_m2, self.wall_puncture_n
        else:
            raise ValueError(f"membrane must be 'skin' or 'wall', got {membrane!r}")
        fp *= (gauge_mm if gauge_mm is not None else self.reference_gauge_mm) \
            / self.reference_gauge_mm
        if k2 == 0:
            return fp / k1
        return (-k1 + math.sqrt(k1 * k1 + 4 * k2 * fp)) / (2 * k2)


@dataclass(frozen=True, slots=True)
class NeedleForce:
    """What the tissue does to the needle in one step.

    ``axial_n`` resists insertion: > 0 while pushing in (the force on the needle is
    ``-axial_n * axis``), < 0 while withdrawing (friction then pulls the needle in).
    ``force_world`` is the total force on the needle (axial plus lateral), world frame.
    ``tip_label`` is the tissue around the tip: the membrane's (SKIN or WALL) while one is
    being tented, otherwise the phantom's label at the tip. ``events`` lists what happened
    in this step, in order. ``deflection_m`` is the tenting of the membrane in contact
    (``contact``: '', 'skin', 'wall' or 'back_wall'; ``vein`` its vein, else -1).
    ``axial_n = stiffness_n + friction_n + cutting_n`` (Okamura 2004's three parts).
    """

    axial_n: float
    force_world: np.ndarray
    lateral_n: float
    tip_label: int
    in_lumen: bool
    events: tuple[str, ...]
    inserted_length_m: float
    deflection_m: float = 0.0
    contact: str = NO_CONTACT
    vein: int = -1
    stiffness_n: float = 0.0
    friction_n: float = 0.0
    cutting_n: float = 0.0


class NeedleTissueModel:
    """Stateful needle-tissue force model for one needle in one :class:`Phantom`.

    Call :meth:`step` once per simulator tick with the needle tip and its unit insertion
    axis (world frame). The model remembers the skin entry point, which membranes have
    been punctured (holes, so withdrawing and re-advancing along the same path does not
    puncture again), and which tissues the shaft has passed through (for friction). It
    writes the vein's sideways displacement into ``state.roll`` while the tip pushes on
    an intact vein wall. Deterministic: the same inputs give the same outputs.
    """

    def __init__(self, phantom: Phantom, params: TissueParameters = TissueParameters(),
                 gauge_mm: float = 0.8) -> None:
        if not isinstance(phantom, Phantom):
            raise TypeError('phantom must be a Phantom')
        if not isinstance(params, TissueParameters):
            raise TypeError('params must be TissueParameters')
        if not (math.isfinite(gauge_mm) and gauge_mm > 0):
            raise ValueError(f'gauge_mm must be finite and > 0, got {gauge_mm!r}')
        self.phantom = phantom
        self.params = params
        self.gauge_mm = float(gauge_mm)
        p = params
        scale = self.gauge_mm / p.reference_gauge_mm
        # Per-label tables, indexed by AIR, SKIN, FAT, MUSCLE, WALL, LUMEN.
        self._cutting = tuple(scale * c for c in (
            0.0, p.cutting_skin_n, p.cutting_fat_n, p.cutting_muscle_n, p.cutting_wall_n,
            p.cutting_lumen_n))
        self._coulomb = tuple(scale * c for c in (
            0.0, p.friction_skin_n_per_m, p.friction_fat_n_per_m, p.friction_muscle_n_per_m,
            p.friction_wall_n_per_m, p.friction_lumen_n_per_m))
        self._viscous = tuple(scale * c for c in (
            0.0, p.viscous_skin_ns_per_m2, p.viscous_fat_ns_per_m2, p.viscous_muscle_ns_per_m2,
            p.viscous_wall_ns_per_m2, p.viscous_lumen_ns_per_m2))
        self._static = tuple(p.static_friction_ratio * c for c in self._coulomb)
        self._skin_fp = scale * p.skin_puncture_n
        self._wall_fp = scale * p.wall_puncture_n
        self._walls = tuple(v.wall for v in phantom.veins)
        self.reset()

    def reset(self) -> None:
        """Forget the insertion: no entry point, no holes, no shaft track.

        ``PhantomState.roll`` belongs to the caller and is left as it is.
        """
        self._prev_tip: tuple[float, float, float] | None = None
        self._inserted = False
        self._entry_arm = (0.0, 0.0, 0.0)     # skin entry point, arm frame (drift removed)
        self._skin_holes: list[tuple[float, float, float]] = []
        # (vein, _FRONT/_BACK, y, x and z relative to the vein centre at that y)
        self._wall_holes: list[tuple[int, int, float, float, float]] = []
        self._runs: list[list] = []           # shaft track: [end arc length, label]
        self._track_end = 0.0
        # Membranes the shaft is through now, (vein, _FRONT/_BACK) -> arc length of the hole:
        # they move with the needle, so they count as punctured wherever the line meets them.
        self._threaded: dict[tuple[int, int], float] = {}
        self._pushed: set[int] = set()        # veins this model has displaced
        self._cache: list[list | None] = [None] * len(self.phantom.veins)

    # -- the step ------------------------------------------------------------------------
    def step(self, tip: np.ndarray, axis: np.ndarray, state: PhantomState,
             dt_s: float = 1e-3) -> NeedleForce:
        """Advance the model to the needle pose ``(tip, axis)`` reached after ``dt_s``.

        ``tip`` is the needle tip and ``axis`` the unit insertion direction, both in the
        world frame (metres). The speed along the axis (for friction and cutting) is the
        tip's displacement since the previous call over ``dt_s``. Forces and labels are
        for the geometry of ``state`` as passed in; a vein's roll written into
        ``state.roll`` takes effect from the next call. Raises ValueError on non-finite
        input, a wrong shape, an axis whose norm is not 1 (within 1e-6) or a
        non-positive ``dt_s``; the model is then unchanged.
        """
        tx, ty, tz, ux, uy, uz = _validate(tip, axis, dt_s)
        ph = self.phantom
        offx, offy, offz = ph.offset(state).tolist()
        if self._prev_tip is None:
            ds = 0.0
        else:
            px, py, pz = self._prev_tip
            ds = (tx - px) * ux + (ty - py) * uy + (tz - pz) * uz
        self._prev_tip = (tx, ty, tz)
        v = ds / dt_s
        alpha = dt_s / (self.params.roll_time_constant_s + dt_s)
        events: list[str] = []

        if not self._inserted:
            s1 = self._skin_entry(tx, ty, tz, ux, uy, uz, offx, offy, offz)
            if s1 is None:
                self._relax_rolls(state, alpha)
                return _free(AIR, events)
            ex, ey, ez = tx + s1 * ux, ty + s1 * uy, tz + s1 * uz
            arm_point = (ex - offx, ey - offy, ez - offz)
            if not self._near_skin_hole(arm_point):
                d = -s1
                p = self.params
                f = p.skin_k1_n_per_m * d + p.skin_k2_n_per_m2 * d * d
                if f < self._skin_fp:
                    self._relax_rolls(state, alpha)
                    return NeedleForce(
                        axial_n=f, force_world=np.array((-f * ux, -f * uy, -f * uz)),
                        lateral_n=0.0, tip_label=SKIN, in_lumen=False, events=(),
                        inserted_length_m=0.0, deflection_m=d, contact=SKIN_CONTACT,
                        stiffness_n=f)
                events.append(SKIN_PUNCTURE)
                self._skin_holes.append(arm_point)
            self._inserted = True
            self._entry_arm = arm_point
            self._runs = []
            self._track_end = 0.0
            self._threaded = {}

        ex = self._entry_arm[0] + offx
        ey = self._entry_arm[1] + offy
        ez = self._entry_arm[2] + offz
        length = (tx - ex) * ux + (ty - ey) * uy + (tz - ez) * uz
        if length <= 0.0:
            events.append(EXIT)
            self._inserted = False
            self._runs = []
            self._track_end = 0.0
            self._threaded = {}
            self._relax_rolls(state, alpha)
            return _free(AIR, events)

        # Walls along the needle's line: the tissue label at the tip and every membrane
        # the tip has gone past since the skin entry.
        label = self._skin_label(tx, ty, tz, offx, offy, offz)
        candidates = []
        if label != AIR:
            for i in range(len(self._walls)):
                label = self._vein_pass(i, tx, ty, tz, ux, uy, uz, length, state, offx, offz,
                                        label, candidates)
        threaded = self._threaded
        for key, s_hole in list(threaded.items()):
            if length <= s_hole:
                del threaded[key]  # withdrawn behind it
        contact = None
        if candidates:
            candidates.sort(key=_first)
            p = self.params
            for pos, kind, i, ly, lx, lz, ha, hb in candidates:
                if (i, kind) in threaded or self._near_wall_hole(i, kind, ly, lx, lz):
                    continue
                d = -pos
                f = p.wall_k1_n_per_m * d + p.wall_k2_n_per_m2 * d * d
                if f >= self._wall_fp:
                    self._wall_holes.append((i, kind, ly, lx, lz))
                    threaded[(i, kind)] = length - d
                    events.append(WALL_PUNCTURE if kind == _FRONT else BACK_WALL_PUNCTURE)
                    continue
                contact = (kind, i, d, f, lx, lz, ha, hb)
                break

        # Shaft track (tissue per arc length) for friction.
        target = length - contact[2] if contact is not None else length
        if target < self._track_end:
            self._truncate(target)
        elif target > self._track_end:
            gap_label = label if contact is None else (self._runs[-1][1] if self._runs else SKIN)
            self._extend(target, gap_label, ex, ey, ez, ux, uy, uz, state)
        friction = self._friction(v)

        lat = (0.0, 0.0, 0.0)
        lateral = 0.0
        if contact is None:
            tip_label = label
            cutting = self._cutting[label] if v > self.params.stick_velocity_m_s else 0.0
            membrane = 0.0
            deflection = 0.0
            kind_name = NO_CONTACT
            vein = -1
        else:
            kind, vein, deflection, membrane, lx, lz, ha, hb = contact
            tip_label = WALL
            cutting = 0.0
            kind_name = WALL_CONTACT if kind == _FRONT else BACK_WALL_CONTACT
            # Wedge: the front wall's reaction is along its outward normal m. A vein with
            # the needle through its front wall is skewered: its back wall cannot roll it.
            mx, mz = lx / (ha * ha), lz / (hb * hb)
            norm = math.hypot(mx, mz)
            if kind == _FRONT and (vein, _FRONT) not in threaded and norm > 0.0:
                mx, mz = mx / norm, mz / norm
                cosine = max(-(mx * ux + mz * uz), self.params.min_contact_cosine)
                rx = membrane / cosine * mx                 # on the needle, world x
                lat = (rx * (1.0 - ux * ux), -rx * ux * uy, -rx * ux * uz)
                lateral = abs(rx) * math.sqrt(max(0.0, 1.0 - ux * ux))
                target_roll = ph.roll_from_push(vein, -rx)  # the needle pushes the vein
                roll = _roll_list(state, len(self._walls))
                roll[vein] += alpha * (target_roll - roll[vein])
                self._pushed.add(vein)

        axial = membrane + cutting + friction
        return NeedleForce(
            axial_n=axial,
            force_world=np.array((-axial * ux + lat[0], -axial * uy + lat[1],
                                  -axial * uz + lat[2])),
            lateral_n=lateral, tip_label=int(tip_label), in_lumen=tip_label == LUMEN,
            events=tuple(events), inserted_length_m=length, deflection_m=deflection,
            contact=kind_name, vein=vein, stiffness_n=membrane, friction_n=friction,
            cutting_n=cutting)

    # -- geometry ------------------------------------------------------------------------
    def _skin_entry(self, tx: float, ty: float, tz: float, ux: float, uy: float, uz: float,
                    offx: float, offy: float, offz: float) -> float | None:
        """Signed arc length (< 0) back along the axis to the skin, or None if outside."""
        if self._skin_label(tx, ty, tz, offx, offy, offz) == AIR:
            return None
        ph = self.phantom
        x0 = tx - ph.axis_x - offx
        z0 = tz - ph.axis_z - offz
        qa = ux * ux + uz * uz
        qb = x0 * ux + z0 * uz
        qc = x0 * x0 + z0 * z0 - ph.arm_radius * ph.arm_radius
        if qa < 1e-12:
            return None
        if qc >= 0.0:
            return 0.0  # on the skin (to rounding): touching, no tenting yet
        return (-qb - math.sqrt(qb * qb - qa * qc)) / qa

    def _skin_label(self, tx: float, ty: float, tz: float, offx: float, offy: float,
                    offz: float) -> int:
        """The layer label (AIR, SKIN, FAT, MUSCLE) at the tip, as Phantom.labels."""
        ph = self.phantom
        dx = tx - ph.axis_x - offx
        if not (abs(dx) < ph.arm_radius and abs(ty - offy - ph.center_y) <= ph.length / 2):
            return AIR
        depth = ph.axis_z + offz + math.sqrt(ph.arm_radius ** 2 - dx * dx) - tz
        if depth < 0:
            return AIR
        if depth < ph.skin_thickness:
            return SKIN
        if depth < ph.skin_thickness + ph.fat_thickness:
            return FAT
        return MUSCLE

    def _vein_pass(self, i: int, tx: float, ty: float, tz: float, ux: float, uy: float,
                   uz: float, length: float, state: PhantomState, offx: float, offz: float,
                   label: int, out: list) -> int:
        """Label the tip for vein ``i`` and collect the wall membranes it has gone past.

        The vein is a straight elliptic tube through its centre at the tip's y, with the
        local course (dx/dy, dz/dy); the needle's line meets its outer and inner ellipse
        at arc lengths s (tip at s = 0, s < 0 behind the tip).
        """
        cx, sx, cz, sz, a, b = self._vein_local(i, ty, state, offx, offz)
        w = self._walls[i]
        big_a, big_b = a + w, b + w
        x0, z0 = tx - cx, tz - cz
        if math.hypot(x0 / big_a, z0 / big_b) < 1:
            label = LUMEN if math.hypot(x0 / a, z0 / b) < 1 else WALL
        ex, ez = ux - sx * uy, uz - sz * uy
        outer = _ellipse_hits(x0, z0, ex, ez, big_a, big_b)
        if outer is None or outer[0] >= 0.0 or -outer[0] > length:
            return label
        s = outer[0]
        out.append((s, _FRONT, i, ty + s * uy, x0 + s * ex, z0 + s * ez, big_a, big_b))
        inner = _ellipse_hits(x0, z0, ex, ez, a, b)
        if inner is not None and inner[1] < 0.0 and -inner[1] <= length:
            s = inner[1]
            out.append((s, _BACK, i, ty + s * uy, x0 + s * ex, z0 + s * ez, a, b))
        return label

    def _vein_local(self, i: int, y: float, state: PhantomState, offx: float, offz: float
                    ) -> tuple[float, float, float, float, float, float]:
        """Centre (x, z) of vein ``i`` at ``y``, its course dx/dy, dz/dy, semi-axes a, b.

        Phantom.vein_geometry is evaluated again only when y has moved 1 mm, the probe
        changed or the roll moved 0.1 mm; in between the centre is extrapolated along the
        course (error ~ curvature * dy^2 / 2 < 1 um), the roll added as the lateral shift
        it is and the skin's curvature over that shift added to z. The arm's drift is a
        pure translation and is added outside the cache.
        """
        roll = state.roll[i] if len(state.roll) > i else 0.0
        c = self._cache[i]
        probe = (state.probe_force_n, state.probe_xy)
        if (c is None or abs(y - c[0]) > _CACHE_DY_M or c[1] != probe
                or abs(roll - c[2]) > _CACHE_DROLL_M):
            off = self.phantom.offset(state).tolist()
            g = self.phantom.vein_geometry(i, np.array((y, y + _SLOPE_DY_M)), state)
            gx, gz = g['x'].tolist(), g['z'].tolist()
            c = [y, probe, roll, gx[0] - off[0], (gx[1] - gx[0]) / _SLOPE_DY_M,
                 gz[0] - off[2], (gz[1] - gz[0]) / _SLOPE_DY_M, float(g['a'][0]),
                 float(g['b'][0])]
            self._cache[i] = c
        dy = y - c[0]
        x = c[3] + c[4] * dy
        z = c[5] + c[6] * dy
        shift = roll - c[2]
        if shift != 0.0:
            ph = self.phantom
            r2 = ph.arm_radius ** 2
            before = x - ph.axis_x
            after = before + shift
            z += math.sqrt(max(r2 - after * after, 0.0)) - math.sqrt(max(r2 - before * before,
                                                                          0.0))
            x += shift
        return x + offx, c[4], z + offz, c[6], c[7], c[8]

    # -- holes, shaft track, friction, roll ----------------------------------------------
    def _near_skin_hole(self, point: tuple[float, float, float]) -> bool:
        r = self.params.hole_radius_m
        return any(math.dist(point, h) < r for h in self._skin_holes)

    def _near_wall_hole(self, vein: int, kind: int, y: float, x: float, z: float) -> bool:
        r = self.params.hole_radius_m
        return any(h[0] == vein and h[1] == kind and math.dist((y, x, z), h[2:]) < r
                   for h in self._wall_holes)

    def _truncate(self, target: float) -> None:
        runs = self._runs
        while runs and (runs[-2][0] if len(runs) > 1 else 0.0) >= target:
            runs.pop()
        if runs:
            runs[-1][0] = target
        self._track_end = max(target, 0.0) if runs else 0.0

    def _extend(self, target: float, label: int, ex: float, ey: float, ez: float, ux: float,
                uy: float, uz: float, state: PhantomState) -> None:
        start = self._track_end
        gap = target - start
        if gap <= _STEP_FILL_M:
            labels = (label,)
        else:
            # A jump (puncture, large step): the tissues along it, from the phantom.
            n = math.ceil(gap / _SAMPLE_M)
            s = start + gap * (np.arange(n) + 0.5) / n
            pts = np.column_stack((ex + s * ux, ey + s * uy, ez + s * uz))
            labels = self.phantom.labels(pts, state).tolist()
        n = len(labels)
        runs = self._runs
        for k, lab in enumerate(labels):
            end = start + gap * (k + 1) / n
            if runs and runs[-1][1] == lab:
                runs[-1][0] = end
            else:
                runs.append([end, lab])
        self._track_end = target

    def _friction(self, v: float) -> float:
        """Karnopp friction summed over the shaft's track (> 0 resists insertion)."""
        if not self._runs:
            return 0.0
        stick = self.params.stick_velocity_m_s
        total = 0.0
        start = 0.0
        if abs(v) < stick:
            ratio = v / stick
            for end, lab in self._runs:
                total += (end - start) * self._static[lab] * ratio
                start = end
        else:
            sign = 1.0 if v > 0 else -1.0
            speed = abs(v)
            for end, lab in self._runs:
                total += (end - start) * (self._coulomb[lab] + self._viscous[lab] * speed)
                start = end
            total *= sign
        return total

    def _relax_rolls(self, state: PhantomState, alpha: float) -> None:
        """With the needle out of the skin, veins it pushed return towards rest.

        While the needle is in the tissue a displaced vein leans on the shaft (or is
        skewered by it) and stays where it is.
        """
        if not self._pushed:
            return
        roll = _roll_list(state, len(self._walls))
        for i in sorted(self._pushed):
            roll[i] -= alpha * roll[i]
            if abs(roll[i]) < 1e-9:
                roll[i] = 0.0
                self._pushed.discard(i)


def _validate(tip: np.ndarray, axis: np.ndarray, dt_s: float
              ) -> tuple[float, float, float, float, float, float]:
    t = np.asarray(tip, dtype=float)
    u = np.asarray(axis, dtype=float)
    if t.shape != (3,) or u.shape != (3,):
        raise ValueError(f'tip and axis must be 3-vectors, got shapes {t.shape} and {u.shape}')
    tx, ty, tz = t.tolist()
    ux, uy, uz = u.tolist()
    if not all(map(math.isfinite, (tx, ty, tz, ux, uy, uz))):
        raise ValueError(f'tip {t} or axis {u} is not finite')
    norm = math.sqrt(ux * ux + uy * uy + uz * uz)
    if abs(norm - 1.0) > _AXIS_TOL:
        raise ValueError(f'axis must be a unit vector, |axis| = {norm}')
    if not (math.isfinite(dt_s) and dt_s > 0):
        raise ValueError(f'dt_s must be finite and > 0, got {dt_s!r}')
    return tx, ty, tz, ux, uy, uz


def _ellipse_hits(x0: float, z0: float, ex: float, ez: float, a: float, b: float
                  ) -> tuple[float, float] | None:
    """Arc lengths s1 < s2 where (x0 + s ex, z0 + s ez) is on the ellipse, or None."""
    qa = (ex / a) ** 2 + (ez / b) ** 2
    if qa < 1e-12:
        return None
    qb = x0 * ex / (a * a) + z0 * ez / (b * b)
    qc = (x0 / a) ** 2 + (z0 / b) ** 2 - 1.0
    disc = qb * qb - qa * qc
    if disc <= 0.0:
        return None
    root = math.sqrt(disc)
    return (-qb - root) / qa, (-qb + root) / qa


def _roll_list(state: PhantomState, count: int) -> list[float]:
    if len(state.roll) < count:
        state.roll.extend([0.0] * (count - len(state.roll)))
    return state.roll


def _first(item: tuple) -> float:
    return item[0]


def _free(label: int, events: list[str]) -> NeedleForce:
    return NeedleForce(axial_n=0.0, force_world=np.zeros(3), lateral_n=0.0, tip_label=label,
                       in_lumen=False, events=tuple(events), inserted_length_m=0.0)


__all__ = [
    'BACK_WALL_CONTACT', 'BACK_WALL_PUNCTURE', 'EXIT', 'NO_CONTACT', 'SKIN_CONTACT',
    'SKIN_PUNCTURE', 'WALL_CONTACT', 'WALL_PUNCTURE', 'NeedleForce', 'NeedleTissueModel',
    'TissueParameters']
