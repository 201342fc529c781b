"""Latent-space pictures of an autoencoder or VAE: scatter, manifold grid, interpolation strips.

- `scatter(z, labels)`: the test set's codes coloured by label, drawn with numpy into an RGB
  image (axes, ticks, legend) and saved as PNG. Codes of more than 2 dimensions are shown on
  their first two principal components.
- `manifold(...)`: decoded images on a regular 2-D grid of z: for a VAE the prior's
  quantiles Phi^-1(0.05 .. 0.95) (Kingma & Welling 2014, Fig. 4); for an autoencoder the
  1st..99th percentiles of the test codes.
- `interpolations(...)`: decoded images along z = (1 - t) z_a + t z_b between the codes of
  two test images (the originals at both ends).
- `projector(...)`: TensorBoard embedding projector data (codes, labels, a sprite of the
  images) in a run directory, shown under the Projector tab.

`write_all(model, data, out_dir)` writes all of them for a trained model. Images passed
around here are float32 in [0, 1]; pictures are uint8 RGB or grey [H, W, C].
"""

from __future__ import annotations

import math
import os

import numpy as np
import tensorflow as tf

from gen_keras import png
from gen_keras.config import UsageError, check

PALETTE = np.array(  # ten distinguishable colours (the "tab10" palette), one per class
    [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ],
    np.uint8,
)
_FONT = {  # 3x5 bitmap glyphs for tick labels and the legend
    "0": "111101101101111",
    "1": "010110010010111",
    "2": "111001111100111",
    "3": "111001111001111",
    "4": "101101111001001",
    "5": "111100111001111",
    "6": "111100111101111",
    "7": "111001001001001",
    "8": "111101111101111",
    "9": "111101111001111",
    "-": "000000111000000",
    ".": "000000000000010",
    "z": "000111010100111",
    "P": "110101110100100",
    "C": "011100100100011",
    " ": "000000000000000",
}


# -- the model's latent space -----------------------------------------------------------------


class Latent:
    """encode/decode of an autoencoder (code z) or an unconditional VAE (posterior mean)."""

    def __init__(self, model):
        check(
            model.family in ("autoencoder", "vae"),
            f"latent pictures need an autoencoder or VAE, got a {model.family!r} model",
        )
        check(
            not getattr(model.config, "conditional", False),
            "latent pictures need an unconditional model (got conditional=True)",
        )
        self.model = model
        self.is_vae = model.family == "vae"
        self.dim = model.latent_size if self.is_vae else model.config.latent_dim

    def encode(self, x):
        """Model-space images [B, H, W, C] -> codes float32 [B, latent] (VAE: E_q[z|x])."""
        if self.is_vae:
            return self.model.posterior(x).mean()
        return self.model.encode(x)

    def decode(self, z):
        """Codes [B, latent] -> decoded means as float32 [B, H, W, C] in [0, 1]."""
        m = self.model
        mean = m.head.mean(m.decode_params(z)) if self.is_vae else m.decode(z)
        return tf.clip_by_value(m.to_unit(mean), 0.0, 1.0)


def encode_split(latent: Latent, data, limit: int | None = None):
    """Codes [N, d], labels int [N] and model-space images [N, H, W, C] of an eval ImageData."""
    encode = tf.function(latent.encode)
    zs, labels, images = [], [], []
    for batch in data.dataset(500):
        zs.append(encode(batch["image"]).numpy())
        labels.append(batch["label"].numpy())
        images.append(batch["image"].numpy())
        if limit and sum(len(b) for b in labels) >= limit:
            break
    z, y, x = (np.concatenate(a)[:limit] for a in (zs, labels, images))
    return z, y, x


def principal_2d(z: np.ndarray) -> np.ndarray:
    """[N, d] -> [N, 2]: z itself for d = 2, its first two principal components otherwise."""
    if z.shape[1] == 2:
        return z
    centred = z - z.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


# -- drawing -----------------------------------------------------------------------------------


def _text(canvas, x: int, y: int, text: str, colour=(0, 0, 0), scale: int = 2) -> None:
    """Draws text with its top-left corner at (x, y), in place."""
    for i, ch in enumerate(text):
        bits = np.array([int(b) for b in _FONT[ch]], bool).reshape(5, 3)
        glyph = np.kron(bits, np.ones((scale, scale), bool))
        x0 = x + i * 4 * scale
        region = canvas[y : y + 5 * scale, x0 : x0 + 3 * scale]
        region[glyph[: region.shape[0], : region.shape[1]]] = colour


def _text_width(text: str, scale: int = 2) -> int:
    return len(text) * 4 * scale - scale


def nice_ticks(lo: float, hi: float, count: int = 5) -> np.ndarray:
    """Round tick values (1, 2 or 5 times a power of ten apart) within [lo, hi]."""
    raw = (hi - lo) / max(count, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return np.arange(math.ceil(lo / step) * step, hi + 1e-9 * step, step)


def _label(value: float) -> str:
    text = f"{value:.3g}"
    return "0" if text in ("-0", "0") else text


def scatter(
    z2: np.ndarray,
    labels: np.ndarray,
    size: int = 480,
    axis_names=("z1", "z2"),
    seed: int = 0,
) -> np.ndarray:
    """2-D points [N, 2] coloured by integer labels [N] -> uint8 RGB image [H, W, 3].

    A `size` x `size` plot with a frame, round ticks with labels, axis names and a legend of
    the label colours; points are 3x3 squares drawn in a seeded random order (no class always
    on top).
    """
    z2 = np.asarray(z2, np.float64)
    labels = np.asarray(labels).astype(int)
    check(z2.ndim == 2 and z2.shape[1] == 2, f"scatter needs points [N, 2], got {z2.shape}")
    check(labels.shape == (len(z2),), f"labels {labels.shape} do not match points {z2.shape}")
    left, top, right, bottom = 70, 20, 90, 60
    canvas = np.full((top + size + bottom, left + size + right, 3), 255, np.uint8)
    lo, hi = z2.min(0), z2.max(0)
    pad = 0.04 * np.maximum(hi - lo, 1e-6)
    lo, hi = lo - pad, hi + pad

    def to_px(v, axis):
        t = (v - lo[axis]) / (hi[axis] - lo[axis])
        return left + t * (size - 1) if axis == 0 else top + (1.0 - t) * (size - 1)

    order = np.random.default_rng(seed).permutation(len(z2))
    px = np.round(to_px(z2[order, 0], 0)).astype(int)
    py = np.round(to_px(z2[order, 1], 1)).astype(int)
    colours = PALETTE[labels[order] % len(PALETTE)]
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            ys = np.clip(py + dy, top, top + size - 1)
            xs = np.clip(px + dx, left, left + size - 1)
            canvas[ys, xs] = colours
    black = (0, 0, 0)
    canvas[top, left : left + size] = canvas[top + size - 1, left : left + size] = black
    canvas[top : top + size, left] = canvas[top : top + size, left + size - 1] = black
    for axis in (0, 1):
        for tick in nice_ticks(lo[axis], hi[axis]):
            p = int(round(to_px(tick, axis)))
            text = _label(tick)
            if axis == 0:
                canvas[top + size : top + size + 6, p] = black
                _text(canvas, p - _text_width(text) // 2, top + size + 9, text)
            else:
                canvas[p, left - 6 : left] = black
                _text(canvas, left - 9 - _text_width(text), p - 5, text)
    x_name, y_name = axis_names
    _text(canvas, left + size // 2 - _text_width(x_name) // 2, top + size + 32, x_name)
    _text(canvas, 6, top + size // 2 - 5, y_name)
    for k in range(int(labels.max()) + 1 if len(labels) else 0):
        y0 = top + 10 + 22 * k
        canvas[y0 : y0 + 10, left + size + 20 : left + size + 30] = PALETTE[k % len(PALETTE)]
        _text(canvas, left + size + 38, y0, str(k))
    return canvas


def manifold(latent: Latent, lo, hi, n: int = 20) -> np.ndarray:
    """Decoded images on an n x n grid spanning [lo, hi] per axis of a 2-D latent.

    lo, hi: [2] (use `prior_range` for a VAE, percentiles of codes for an autoencoder).
    Returns unit images [n*n, H, W, C], row-major, top row = highest z2 (like the scatter).
    """
    check(latent.dim == 2, f"the manifold grid needs latent_dim=2, got {latent.dim}")
    xs = np.linspace(lo[0], hi[0], n)
    ys = np.linspace(hi[1], lo[1], n)
    grid = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2).astype(np.float32)
    return latent.decode(tf.constant(grid)).numpy()


def prior_range() -> tuple[np.ndarray, np.ndarray]:
    """The Gaussian prior's 5% and 95% quantiles per axis, the VAE manifold's range."""
    q = float(tf.math.ndtri(0.95))
    return np.array([-q, -q]), np.array([q, q])


def interpolations(latent: Latent, x_a, x_b, steps: int = 10) -> np.ndarray:
    """Model-space images x_a, x_b [P, H, W, C] -> unit images [P, steps + 2, H, W, C].

    Row p: the original x_a[p], decodes of z = (1 - t) z_a + t z_b at t = 0 .. 1 in `steps`
    steps, then the original x_b[p].
    """
    check(steps >= 2, f"steps={steps} must be >= 2")
    z_a, z_b = latent.encode(x_a), latent.encode(x_b)
    t = tf.linspace(0.0, 1.0, steps)[None, :, None]
    z = (1.0 - t) * z_a[:, None] + t * z_b[:, None]
    decoded = latent.decode(tf.reshape(z, [-1, latent.dim]))
    decoded = tf.reshape(decoded, [-1, steps, *x_a.shape[1:]])
    unit = latent.model.to_unit
    return tf.concat([unit(x_a)[:, None], decoded, unit(x_b)[:, None]], 1).numpy()


def sprite(images: np.ndarray) -> np.ndarray:
    """Unit images [N, H, W, C] -> uint8 [rows*H, cols*W, C], a square grid without gaps."""
    n, h, w, c = images.shape
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    out = np.zeros((rows * cols, h, w, c), np.float32)
    out[:n] = images
    out = out.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)
    return (np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def projector(run_dir: str, z: np.ndarray, labels: np.ndarray, images: np.ndarray) -> str:
    """Writes TensorBoard projector data for codes z [N, d] into run_dir; returns its config.

    run_dir must be a TensorBoard run (a folder with event files, e.g. model_dir/eval): the
    projector tab lists runs that hold a projector_config.pbtxt.
    """
    from tensorboard.plugins import projector as tb_projector

    os.makedirs(os.path.join(run_dir, "latents"), exist_ok=True)
    np.savetxt(os.path.join(run_dir, "latents", "z.tsv"), z, delimiter="\t", fmt="%.6g")
    with open(os.path.join(run_dir, "latents", "labels.tsv"), "w") as f:
        f.writelines(f"{int(y)}\n" for y in labels)
    png.write(os.path.join(run_dir, "latents", "sprite.png"), sprite(images))
    config = tb_projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = "latent_z"
    embedding.tensor_path = "latents/z.tsv"
    embedding.metadata_path = "latents/labels.tsv"
    embedding.sprite.image_path = "latents/sprite.png"
    embedding.sprite.single_image_dim.extend(images.shape[2:0:-1])  # [width, height]
    tb_projector.visualize_embeddings(run_dir, config)
    return os.path.join(run_dir, "projector_config.pbtxt")


def write_all(
    model, data, out_dir: str, projector_dir: str | None = None, pairs: int = 8, seed: int = 0
) -> dict[str, str]:
    """Every picture of a trained AE/VAE on eval data (an ImageData); returns {name: path}.

    scatter.png (the codes, or their 2 principal components, coloured by label),
    manifold.png (latent_dim 2 only), interpolation.png (`pairs` strips between random test
    images); and projector data in projector_dir (a TensorBoard run folder) if given.
    """
    latent = Latent(model)
    z, labels, images = encode_split(latent, data)
    if len(z) < 2:
        raise UsageError(f"latent pictures need at least 2 eval images, got {len(z)}")
    paths = {}
    names = ("z1", "z2") if latent.dim == 2 else ("PC1", "PC2")
    paths["scatter"] = os.path.join(out_dir, "scatter.png")
    png.write(paths["scatter"], scatter(principal_2d(z), labels, axis_names=names))
    if latent.dim == 2:
        if latent.is_vae:
            lo, hi = prior_range()
        else:
            lo, hi = np.percentile(z, 1, axis=0), np.percentile(z, 99, axis=0)
        n = 20
        paths["manifold"] = os.path.join(out_dir, "manifold.png")
        png.write(paths["manifold"], png.grid(manifold(latent, lo, hi, n), n))
    rng = np.random.default_rng(seed)
    a, b = rng.choice(len(z), size=(2, min(pairs, len(z) // 2)), replace=False)
    strips = interpolations(latent, tf.constant(images[a]), tf.constant(images[b]))
    paths["interpolation"] = os.path.join(out_dir, "interpolation.png")
    png.write(
        paths["interpolation"],
        png.grid(strips.reshape(-1, *strips.shape[2:]), strips.shape[1]),
    )
    if projector_dir:
        unit = np.asarray(latent.model.to_unit(images))
        paths["projector"] = projector(projector_dir, z, labels, unit)
    return paths
