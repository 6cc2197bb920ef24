"""Rendering core of the synthetic H&E generator (DESIGN.md §6): morphology in, RGB out.

Tissue is built as concentration maps of haematoxylin (H) and eosin (E) and turned into light
with Beer-Lambert: ``OD = cH·h + cE·e + residual``, ``RGB = I0·exp(-OD)``, with the
Ruifrok-Johnston stain vectors. Only a ``ClassMorphology`` (nuclear size, pleomorphism, packing,
hyperchromasia, glands and lumina, stroma texture) depends on the class; a ``SlideStain`` (stain
vectors and strengths, blur, noise, illumination) is drawn per synthetic slide, independently of
the class. The whole image is rendered at once, so tile borders are invisible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image
from scipy import ndimage

H_REF = np.array([0.65, 0.70, 0.29]) / np.linalg.norm([0.65, 0.70, 0.29])
E_REF = np.array([0.07, 0.99, 0.11]) / np.linalg.norm([0.07, 0.99, 0.11])
REF_AREA = 224.0 * 224.0  # densities in the class tables are per 224 x 224 px
NUCLEAR_MASS = 0.09  # mean nuclear haematoxylin per tissue pixel, before the slide's strength
MASS_BALANCE = 0.7  # 1 = every field has exactly NUCLEAR_MASS, 0 = no balancing


@dataclass(frozen=True)
class ClassMorphology:
    """What a class looks like; lengths in pixels, densities per 224 x 224 px.

    Colour must not give the class away, so three things are held class-independent: the white
    area (fat tops lumina up to a target drawn per field), the nuclear haematoxylin mass per tissue
    pixel (balanced towards ``NUCLEAR_MASS``), and the stroma's fibre contrast. The tables also
    keep epithelial area x ``packing`` similar, so the class shows in the size, shape, crowding
    and arrangement of nuclei and glands.
    """

    nucleus_radius: float  # mean equivalent radius of epithelial nuclei
    pleomorphism: float  # coefficient of variation of nuclear size (also drives shape variance)
    elongation: float  # mean major/minor axis ratio of epithelial nuclei
    hyperchromasia: float  # haematoxylin multiplier of epithelial nuclei (about 0.9..1.3)
    vesicular: float  # 0 = solid dark nuclei, 1 = pale centre, dark rim and nucleolus
    packing: float  # fraction of epithelium covered by nuclei
    gland_density: float  # glands or nests per 224 x 224 px
    gland_radius: float  # mean outer radius of a gland or nest
    gland_elongation: float  # major/minor axis ratio of a gland
    gland_irregularity: float  # 0 = smooth ellipse, 1 = very ragged outline
    lumen_ratio: float  # lumen radius / gland radius (0 = solid nest)
    cribriform: float  # secondary punched-out lumina per nest
    goblet: float  # mucin vacuoles (goblet cells) per gland
    polarity: float  # 0..1: share of nuclei aligned radially (columnar epithelium)
    cleft: float  # retraction cleft width around nests, px (0 = none)
    myoepithelium: float  # 0..1 completeness of the flat basal cell layer around glands
    stroma_cells: float  # fibroblast nuclei per 224 x 224 px of stroma
    lymphocytes: float  # lymphocytes per 224 x 224 px of stroma
    scattered_cells: float  # single tumour cells per 224 x 224 px of stroma
    fibre_period: float  # collagen fibre spacing, px
    fibre_waviness: float  # 0 = straight parallel bundles, 1 = wavy


@dataclass(frozen=True)
class SlideStain:
    """Everything about staining and scanning that belongs to a slide, not to a class."""

    h_vector: tuple[float, float, float]
    e_vector: tuple[float, float, float]
    h_strength: float
    e_strength: float
    cytoplasm_ratio: float  # eosin of epithelial cytoplasm relative to stroma
    residual: tuple[float, float, float]
    background: tuple[float, float, float]  # I0 per channel
    blur: float  # Gaussian sigma, px
    noise: float  # pixel noise sd, 8-bit units
    vignette: float  # depth of the low-frequency illumination field

    @staticmethod
    def draw(rng: np.random.Generator) -> SlideStain:
        """A random slide: stain angle jitter, strengths, blur, noise and illumination."""
        return SlideStain(
            h_vector=_jitter_vector(H_REF, rng, 0.04),
            e_vector=_jitter_vector(E_REF, rng, 0.05),
            h_strength=float(np.exp(rng.uniform(np.log(0.6), np.log(1.5)))),
            e_strength=float(np.exp(rng.uniform(np.log(0.6), np.log(1.5)))),
            cytoplasm_ratio=float(rng.uniform(0.6, 0.95)),
            residual=_triple(rng.uniform(0.0, 0.06) + rng.uniform(-0.01, 0.01, 3)),
            background=_triple(rng.uniform(232, 252) + rng.uniform(-5, 3, 3)),
            blur=float(rng.uniform(0.4, 1.3)),
            noise=float(rng.uniform(1.0, 4.0)),
            vignette=float(rng.uniform(0.0, 0.06)),
        )

    def jitter(self, rng: np.random.Generator) -> SlideStain:
        """The same slide seen in another field: small changes in strength and vector angle."""
        return replace(
            self,
            h_vector=_jitter_vector(np.array(self.h_vector), rng, 0.025),
            e_vector=_jitter_vector(np.array(self.e_vector), rng, 0.025),
            h_strength=self.h_strength * float(np.exp(rng.normal(0, 0.2))),
            e_strength=self.e_strength * float(np.exp(rng.normal(0, 0.2))),
            cytoplasm_ratio=float(np.clip(self.cytoplasm_ratio + rng.normal(0, 0.06), 0.5, 1.0)),
            background=_triple(np.clip(np.array(self.background) + rng.normal(0, 2.0, 3), 200, 255)),
            blur=float(np.clip(self.blur * np.exp(rng.normal(0, 0.15)), 0.3, 1.6)),
        )


def fibre_texture(
    rng: np.random.Generator, shape: tuple[int, int], angle: float, period: float, waviness: float
) -> np.ndarray:
    """Unit-sd collagen texture: noise stretched along ``angle``, bent by a smooth displacement."""
    height, width = shape
    side = int(math.hypot(height, width)) + 8
    step = 4.0  # canvas cells along the fibres, px
    canvas = rng.standard_normal((side, int(side / step) + 2)).astype(np.float32)
    canvas = ndimage.gaussian_filter(canvas, (period * 0.22, 1.6), mode="wrap")
    canvas /= canvas.std() + 1e-6
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy -= height / 2
    xx -= width / 2
    cos, sin = math.cos(angle), math.sin(angle)
    bend = smooth_noise(rng, shape, 45.0) * (2.0 + 14.0 * waviness)
    across = -xx * sin + yy * cos + side / 2 + bend
    along = (xx * cos + yy * sin + side / 2) / step
    return ndimage.map_coordinates(canvas, [across, along], order=1, mode="grid-wrap")


def _triple(values: np.ndarray) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))


def _jitter_vector(vector: np.ndarray, rng: np.random.Generator, amount: float) -> tuple[float, float, float]:
    """A stain vector turned a little (unit length, all components positive)."""
    v = np.clip(vector + rng.normal(0, amount, 3), 0.01, None)
    return _triple(v / np.linalg.norm(v))


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-sd Gaussian random field with correlation length about ``scale`` px."""
    height, width = shape
    step = max(1, int(scale // 3))
    low = rng.standard_normal((height // step + 4, width // step + 4)).astype(np.float32)
    low = ndimage.gaussian_filter(low, scale / step, mode="wrap")
    low = (low - low.mean()) / (low.std() + 1e-6)
    if step == 1:
        return low[:height, :width]
    big = Image.fromarray(low, mode="F").resize(
        ((width // step + 4) * step, (height // step + 4) * step), Image.Resampling.BILINEAR
    )
    return np.asarray(big, dtype=np.float32)[step : step + height, step : step + width]


@dataclass
class _Glands:
    """Per-pixel gland geometry: epithelium, lumen and cleft masks, angle from and depth in the gland."""

    epithelium: np.ndarray
    lumen: np.ndarray
    cleft: np.ndarray
    angle: np.ndarray
    depth: np.ndarray  # distance from the gland centre, 1 at the outline


def _layout_glands(
    m: ClassMorphology, shape: tuple[int, int], rng: np.random.Generator, lumen_scale: float
) -> _Glands:
    height, width = shape
    d_min = np.full(shape, np.inf, dtype=np.float32)
    lumen = np.zeros(shape, dtype=bool)
    angle = np.zeros(shape, dtype=np.float32)
    if m.gland_density > 0:
        spacing = math.sqrt(REF_AREA / m.gland_density)
        margin = m.gland_radius * 1.2
        ys = np.arange(-margin, height + margin, spacing)
        xs = np.arange(-margin, width + margin, spacing)
        centres = [(y + rng.uniform(0, spacing), x + rng.uniform(0, spacing)) for y in ys for x in xs]
        centres = [
            c for c in centres if -margin <= c[0] < height + margin and -margin <= c[1] < width + margin
        ]
        for cy, cx in centres:
            _stamp_gland(m, cy, cx, rng, d_min, lumen, angle, lumen_scale)
    epithelium = (d_min < 1.0) & ~lumen
    cleft = np.zeros(shape, dtype=bool)
    if m.cleft > 0:
        # retraction artefact: crescents of varying width along part of each nest's outline
        reach = m.cleft / max(m.gland_radius, 1.0) * np.clip(1.0 + smooth_noise(rng, shape, 12.0), 0.0, 2.5)
        cleft = (d_min >= 1.0) & (d_min < 1.0 + reach) & (smooth_noise(rng, shape, 20.0) > 0.0)
    return _Glands(epithelium, lumen, cleft, angle, d_min)


def _stamp_gland(
    m: ClassMorphology,
    cy: float,
    cx: float,
    rng: np.random.Generator,
    d_min: np.ndarray,
    lumen: np.ndarray,
    angle: np.ndarray,
    lumen_scale: float,
) -> None:
    radius = m.gland_radius * float(np.exp(rng.normal(0, 0.2)))
    stretch = m.gland_elongation * float(np.exp(rng.normal(0, 0.15)))
    rot = rng.uniform(0, math.pi)
    harmonics = [
        (k, m.gland_irregularity * rng.normal(0, 0.35 / k), rng.uniform(0, 2 * math.pi))
        for k in (2, 3, 4, 5, 7)
    ]
    widest = min(1.8, 1.0 + sum(abs(amp) for _, amp, _ in harmonics))
    reach = radius * math.sqrt(stretch) * widest * (1.0 + 2.5 * m.cleft / radius) + 3
    y0, y1 = max(0, int(cy - reach)), min(d_min.shape[0], int(cy + reach) + 1)
    x0, x1 = max(0, int(cx - reach)), min(d_min.shape[1], int(cx + reach) + 1)
    if y0 >= y1 or x0 >= x1:
        return
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
    u = dx * math.cos(rot) + dy * math.sin(rot)
    v = -dx * math.sin(rot) + dy * math.cos(rot)
    u = u / math.sqrt(stretch)
    v = v * math.sqrt(stretch)
    rho = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u)
    outline = np.ones_like(theta)
    for k, amp, phase in harmonics:
        outline += amp * np.cos(k * theta + phase)
    d = rho / (radius * np.clip(outline, 0.45, 1.8))
    window = (slice(y0, y1), slice(x0, x1))
    closer = d < d_min[window]
    d_min[window] = np.where(closer, d, d_min[window])
    angle[window] = np.where(closer, np.arctan2(dy, dx), angle[window])
    ratio = m.lumen_ratio * lumen_scale * float(np.exp(rng.normal(0, 0.2)))
    if ratio > 0.05:
        lumen[window] |= d < ratio * (
            1 + 0.5 * m.gland_irregularity * np.cos(3 * theta + rng.uniform(0, 6.3)) * 0.3
        )
    holes = rng.poisson(m.cribriform * lumen_scale) if m.cribriform > 0 else 0
    for _ in range(holes):
        r_hole = radius * rng.uniform(0.1, 0.2)
        a, dist = rng.uniform(0, 2 * math.pi), radius * rng.uniform(0.0, 0.55)
        hy, hx = cy + dist * math.sin(a), cx + dist * math.cos(a)
        lumen[window] |= (dy + cy - hy) ** 2 + (dx + cx - hx) ** 2 < r_hole**2
    goblets = rng.poisson(m.goblet) if m.goblet > 0 else 0
    if goblets:  # mucin vacuoles spread through the epithelial ring, placed in the gland's own frame
        theta_g = rng.uniform(-math.pi, math.pi, goblets)
        reach_g = 1.0 + sum(amp * np.cos(k * theta_g + phase) for k, amp, phase in harmonics)
        rho_g = radius * np.clip(reach_g, 0.45, 1.8) * rng.uniform(max(ratio, 0.2) + 0.12, 0.85, goblets)
        gu, gv = rho_g * np.cos(theta_g) * math.sqrt(stretch), rho_g * np.sin(theta_g) / math.sqrt(stretch)
        gx = gu * math.cos(rot) - gv * math.sin(rot)
        gy = gu * math.sin(rot) + gv * math.cos(rot)
        r_g = rng.uniform(2.5, 4.5, goblets)[:, None, None]
        near = (dy[None] - gy[:, None, None]) ** 2 + (dx[None] - gx[:, None, None]) ** 2 < r_g**2
        lumen[window] |= near.any(axis=0) & (d < 0.95)


def _nuclei_in(
    mask: np.ndarray, spacing: float, rng: np.random.Generator, keep: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Jittered hexagonal lattice points (y, x) that fall inside ``mask``."""
    height, width = mask.shape
    row_step = spacing * math.sqrt(3) / 2
    ys = np.arange(0, height + row_step, row_step)
    xs = np.arange(0, width + spacing, spacing)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    gx = gx + (np.arange(len(ys))[:, None] % 2) * spacing / 2
    gy = gy + rng.uniform(-0.3, 0.3, gy.shape) * spacing
    gx = gx + rng.uniform(-0.3, 0.3, gx.shape) * spacing
    iy, ix = np.clip(gy.astype(int), 0, height - 1), np.clip(gx.astype(int), 0, width - 1)
    inside = mask[iy, ix] & (gy < height) & (gx < width) & (gy >= 0) & (gx >= 0)
    inside &= rng.random(inside.shape) < keep
    return gy[inside], gx[inside]


def _stamp_nuclei(
    target: np.ndarray,
    cy: np.ndarray,
    cx: np.ndarray,
    semi_a: np.ndarray,
    semi_b: np.ndarray,
    orient: np.ndarray,
    strength: np.ndarray,
    vesicular: np.ndarray,
) -> None:
    """Add soft-edged elliptical nuclei to ``target`` (in place), batched by size."""
    height, width = target.shape
    flat = target.reshape(-1)
    half_sizes = np.ceil(semi_a + 1.5).astype(int)
    for half in np.unique(half_sizes):
        sel = half_sizes == half
        off = np.arange(-half, half + 1, dtype=np.float32)
        oy, ox = np.meshgrid(off, off, indexing="ij")
        py = np.floor(cy[sel]).astype(int)[:, None, None] + oy.astype(int)[None]
        px = np.floor(cx[sel]).astype(int)[:, None, None] + ox.astype(int)[None]
        fy = (oy[None] - (cy[sel] - np.floor(cy[sel]))[:, None, None]).astype(np.float32)
        fx = (ox[None] - (cx[sel] - np.floor(cx[sel]))[:, None, None]).astype(np.float32)
        cos, sin = np.cos(orient[sel])[:, None, None], np.sin(orient[sel])[:, None, None]
        u = (fx * cos + fy * sin) / semi_a[sel][:, None, None]
        v = (-fx * sin + fy * cos) / semi_b[sel][:, None, None]
        r = np.sqrt(u * u + v * v)
        edge = np.clip((1.0 - r) * semi_b[sel][:, None, None] / 1.1 + 0.5, 0.0, 1.0)
        ves = vesicular[sel][:, None, None]
        profile = 1.0 - ves * 0.55 * np.clip(1.0 - r * 1.3, 0.0, 1.0)  # paler centre
        profile += ves * 0.9 * np.clip(1.0 - r * 5.0, 0.0, 1.0)  # nucleolus
        values = edge * profile * strength[sel][:, None, None]
        ok = (py >= 0) & (py < height) & (px >= 0) & (px < width) & (values > 0)
        flat += np.bincount((py * width + px)[ok], weights=values[ok], minlength=flat.size).astype(np.float32)


_Nuclei = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _nucleus_batch(
    m: ClassMorphology,
    cy: np.ndarray,
    cx: np.ndarray,
    radial: np.ndarray,
    rng: np.random.Generator,
    size_scale: float,
) -> _Nuclei:
    """Epithelial (or tumour) nuclei at (cy, cx): semi-axes, orientation, strength, vesicularity."""
    n = len(cy)
    radius = m.nucleus_radius * size_scale * np.exp(rng.normal(0, m.pleomorphism, n))
    aspect = np.clip(m.elongation * np.exp(rng.normal(0, 0.1 + 0.6 * m.pleomorphism, n)), 1.0, 3.5)
    semi_a, semi_b = radius * np.sqrt(aspect), radius / np.sqrt(aspect)
    aligned = rng.random(n) < m.polarity
    orient = np.where(aligned, radial + rng.normal(0, 0.25, n), rng.uniform(0, math.pi, n))
    strength = m.hyperchromasia * np.exp(rng.normal(0, 0.08 + 0.3 * m.pleomorphism, n))
    ves = np.clip(m.vesicular + rng.normal(0, 0.15, n), 0.0, 1.0)
    return cy, cx, np.clip(semi_a, 1.2, 22.0), np.clip(semi_b, 1.0, 16.0), orient, strength, ves


def render_concentrations(
    m: ClassMorphology, shape: tuple[int, int], rng: np.random.Generator, lumen_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Haematoxylin, stromal eosin and cytoplasmic eosin maps (before the slide's strengths)."""
    size_scale = float(np.exp(rng.normal(0, 0.08)))  # field-to-field variation in nuclear size
    glands = _layout_glands(m, shape, rng, lumen_scale)
    clear = glands.lumen | glands.cleft
    stroma = ~(glands.epithelium | clear)
    # Fat tops the clear area up to a class-independent target, so white says nothing of the class.
    fat = _adipose(stroma, rng.uniform(0.07, 0.15) * lumen_scale - float(clear.mean()), rng)
    clear |= fat
    stroma &= ~fat

    # Stroma: wavy collagen bundles over a low-frequency eosin field; epithelium: smooth cytoplasm.
    fibre_angle = rng.uniform(0, math.pi)
    fibres = fibre_texture(rng, shape, fibre_angle, m.fibre_period, m.fibre_waviness)
    contrast = rng.uniform(0.35, 0.8)  # how strongly fibres show: a property of the field, not the class
    e_stroma = 0.45 * (1.0 + contrast * 0.45 * np.clip(fibres, -2.0, 2.0))
    e_stroma *= 1.0 + 0.12 * smooth_noise(rng, shape, 60.0)
    e_cyto = 0.45 * (1.0 + 0.08 * smooth_noise(rng, shape, 6.0))
    secretion = 0.08 * np.clip(smooth_noise(rng, shape, 12.0), 0.0, None)
    conc_e = np.where(stroma, e_stroma, np.where(glands.lumen, secretion, 0.0)).astype(np.float32)
    conc_cyto = np.where(glands.epithelium, e_cyto, 0.0).astype(np.float32)
    conc_h = np.where(glands.epithelium, 0.07, np.where(stroma, 0.015, 0.0)).astype(np.float32)

    nuclei = np.zeros(shape, dtype=np.float32)
    _epithelial_nuclei(m, glands, nuclei, rng, size_scale)
    halo = _stromal_nuclei(m, stroma, fibre_angle, nuclei, rng, size_scale)
    conc_cyto += halo * e_cyto  # single tumour cells bring their cytoplasm into the stroma
    conc_e *= 1.0 - halo

    chromatin = ndimage.uniform_filter(1.0 + 0.25 * rng.standard_normal(shape, dtype=np.float32), 2)
    nuclei = np.clip(nuclei, 0.0, 2.0) * chromatin
    cover = np.clip(nuclei, 0.0, 1.0)
    # Balance the nuclear haematoxylin per tissue pixel towards a class-independent mass: colour must
    # not tell the class. Fields with fewer or smaller nuclei get them a little darker, and vice versa.
    tissue = ~clear
    mass = float(nuclei[tissue].mean()) if tissue.any() else 0.0
    if mass > 0:
        gain = float(np.clip((NUCLEAR_MASS / mass) ** MASS_BALANCE, 0.7, 1.4))
        nuclei *= gain * float(np.exp(rng.normal(0, 0.05)))
    conc_h = conc_h * (1.0 - cover) + nuclei
    return conc_h, conc_e * (1.0 - 0.7 * cover), conc_cyto * (1.0 - 0.7 * cover)


def _epithelial_nuclei(
    m: ClassMorphology, glands: _Glands, nuclei: np.ndarray, rng: np.random.Generator, size_scale: float
) -> None:
    """Epithelial nuclei on a jittered lattice (nuclear / epithelial area = packing), plus myoepithelium."""
    mean_area = math.pi * (m.nucleus_radius * size_scale) ** 2 * math.exp(2 * m.pleomorphism**2)
    spacing = math.sqrt(mean_area / (m.packing * math.sqrt(3) / 2))
    inner = glands.epithelium.copy()
    if m.myoepithelium > 0:
        inner &= glands.depth < 0.9
    if m.polarity > 0 and m.lumen_ratio > 0:  # polarised epithelium keeps its nuclei towards the base
        inner &= glands.depth > 1.0 - (1.0 - m.lumen_ratio) * (1.0 - 0.5 * m.polarity)
    ey, ex = _nuclei_in(inner, spacing, rng)
    radial = glands.angle[ey.astype(int), ex.astype(int)]
    _stamp_nuclei(nuclei, *_nucleus_batch(m, ey, ex, radial, rng, size_scale))
    if m.myoepithelium > 0:  # flat basal cells hugging the outline, long axis along it
        ring = glands.epithelium & (glands.depth >= 0.9)
        my, mx = _nuclei_in(ring, 9.0, rng, keep=0.45 * m.myoepithelium)
        n = len(my)
        tangent = glands.angle[my.astype(int), mx.astype(int)] + math.pi / 2
        r = 2.4 * np.exp(rng.normal(0, 0.1, n))
        _stamp_nuclei(nuclei, my, mx, r * 1.8, r / 1.8, tangent, np.full(n, 1.1), np.zeros(n))


def _stromal_nuclei(
    m: ClassMorphology,
    stroma: np.ndarray,
    fibre_angle: float,
    nuclei: np.ndarray,
    rng: np.random.Generator,
    size_scale: float,
) -> np.ndarray:
    """Spindle fibroblasts along the fibres, lymphocytes, single tumour cells; returns their cytoplasm."""
    height, width = stroma.shape
    halo = np.zeros(stroma.shape, dtype=np.float32)
    area = float(stroma.mean()) * height * width / REF_AREA
    for kind, count in (("fibro", m.stroma_cells), ("lympho", m.lymphocytes), ("tumour", m.scattered_cells)):
        n = int(rng.poisson(count * area))
        sy, sx = rng.uniform(0, height, n), rng.uniform(0, width, n)
        keep = stroma[sy.astype(int), sx.astype(int)]
        sy, sx = sy[keep], sx[keep]
        n = len(sy)
        if n == 0:
            continue
        if kind == "fibro":
            r = 2.6 * np.exp(rng.normal(0, 0.15, n))
            asp = rng.uniform(2.5, 4.5, n)
            orient = fibre_angle + rng.normal(0, 0.25, n)
            one = np.ones(n)
            batch = (sy, sx, r * np.sqrt(asp), r / np.sqrt(asp), orient, 1.15 * one, 0 * one)
        elif kind == "lympho":
            r = 2.8 * np.exp(rng.normal(0, 0.1, n))
            batch = (sy, sx, r, r, np.zeros(n), np.full(n, 1.35), np.zeros(n))
        else:  # a nucleus inside a rim of cytoplasm
            batch = _nucleus_batch(m, sy, sx, rng.uniform(0, math.pi, n), rng, size_scale)
            _stamp_nuclei(halo, sy, sx, batch[2] * 1.9, batch[3] * 2.1, batch[4], np.ones(n), np.zeros(n))
        _stamp_nuclei(nuclei, *batch)
    return np.clip(halo, 0.0, 1.0)


def _adipose(stroma: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Fat: patches of stroma turned into packed clear adipocytes (Voronoi cells with thin walls)."""
    shape = stroma.shape
    height, width = shape
    if fraction <= 0.005 or not stroma.any():
        return np.zeros(shape, dtype=bool)
    field = smooth_noise(rng, shape, 22.0)
    share = min(0.9, fraction / 0.8 / max(float(stroma.mean()), 1e-3))
    region = stroma & (field > np.quantile(field[stroma], 1.0 - share))
    spacing = rng.uniform(15.0, 22.0)
    ny, nx = int(height / spacing) + 3, int(width / spacing) + 3
    seed_y = (np.arange(ny)[:, None] - 1 + rng.uniform(0.15, 0.85, (ny, nx))) * spacing
    seed_x = (np.arange(nx)[None, :] - 1 + rng.uniform(0.15, 0.85, (ny, nx))) * spacing
    py, px = np.nonzero(region)  # only the fat patches need their Voronoi walls
    fy, fx = py.astype(np.float32), px.astype(np.float32)
    cy, cx = (fy // spacing).astype(int) + 1, (fx // spacing).astype(int) + 1
    near = np.full(len(py), np.inf, dtype=np.float32)
    second = np.full(len(py), np.inf, dtype=np.float32)
    for oy in (-1, 0, 1):
        for ox in (-1, 0, 1):
            d = np.hypot(fy - seed_y[cy + oy, cx + ox], fx - seed_x[cy + oy, cx + ox])
            second = np.minimum(second, np.maximum(near, d))
            near = np.minimum(near, d)
    fat = np.zeros(shape, dtype=bool)
    fat[py, px] = second - near > 2.2
    return fat


def render_rgb(
    m: ClassMorphology,
    stain: SlideStain,
    shape: tuple[int, int],
    rng: np.random.Generator,
    lumen_scale: float = 1.0,
) -> np.ndarray:
    """One field of view as an H x W x 3 uint8 RGB array (Beer-Lambert on the concentration maps)."""
    conc_h, conc_e_stroma, conc_e_cyto = render_concentrations(m, shape, rng, lumen_scale)
    conc_e = conc_e_stroma + conc_e_cyto * stain.cytoplasm_ratio
    conc_h = ndimage.gaussian_filter(conc_h * stain.h_strength, stain.blur)
    conc_e = ndimage.gaussian_filter(conc_e * stain.e_strength, stain.blur)
    od = (
        conc_h[..., None] * np.asarray(stain.h_vector, dtype=np.float32)
        + conc_e[..., None] * np.asarray(stain.e_vector, dtype=np.float32)
        + np.asarray(stain.residual, dtype=np.float32) * (conc_h + conc_e > 0.05)[..., None]
    )
    shade = 1.0 - stain.vignette * (0.5 + 0.5 * smooth_noise(rng, shape, 150.0))
    light = np.asarray(stain.background, dtype=np.float32) * shade[..., None]
    rgb = light * np.exp(-od) + stain.noise * rng.standard_normal(od.shape, dtype=np.float32)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
