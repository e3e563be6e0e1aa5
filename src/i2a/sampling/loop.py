"""Sampling for `i2a generate`: inputs read one by one and sampled together, never more than `batch_size`
(input, sample) rows at a time, each sound written as soon as it is drawn, with the same library functions as the
workflow's sample_tokens and vocode jobs. An input's samples depend only on it, the seed and the model, not on the
other inputs or on batching: sample k of every input draws with the seed the workflow gives sample k of its first
validation video."""
from __future__ import annotations

import json
import logging
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import librosa
import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from i2a.data.media import mux_audio
from i2a.infra.atomic import atomic_path, write_text
from i2a.infra.checksum import file_digest
from i2a.infra.precision import autocast_dtype, set_precision
from i2a.models.codebook import decode_tokens
from i2a.models.condition import condition
from i2a.models.vocoder import write_wav
from i2a.sampling.errors import InputError, ModelError
from i2a.sampling.inputs import Prepared, expand_inputs, prepare
from i2a.sampling.samples import sample_seeds, videos_per_batch
from i2a.spec.config import check_sampling_values

if TYPE_CHECKING:
    from i2a.sampling.loading import SoundModel

log = logging.getLogger(__name__)

MANIFEST = ".i2a-generate.json"  # in an output folder: the files generate wrote there, name -> MD5
MAX_PANELS = 8  # samples shown in an input's spectrogram figure; the wavs hold them all


@dataclass
class Result:
    """What was made for one input (or why nothing was)."""

    path: Path
    kind: str = ""
    wavs: list[Path] = field(default_factory=list)
    spectrogram: Path | None = None
    videos: list[Path] = field(default_factory=list)
    mels: np.ndarray | None = None  # (samples, n_mels, T) in [0, 1], with keep_mels
    error: str | None = None


def sample_seeds_for_inputs(seed: int, samples: int) -> list[int]:
    """Sample k's seed, the same for every input: the workflow's seed of sample k of its first video."""
    return [int(s) for s in sample_seeds(seed, 1, samples)[0]]


def output_stems(paths: Sequence[Path]) -> list[str]:
    """A file name stem per input: its own, with -2, -3, ... when an earlier input has taken it."""
    stems: list[str] = []
    for path in paths:
        stem, n = path.stem, 1
        while stem in stems:
            n += 1
            stem = f"{path.stem}-{n}"
        stems.append(stem)
    return stems


def spectrogram_figure(mels01: np.ndarray, seeds: Sequence[int], mel, title: str = ""):
    """An input's generated spectrograms, one labelled panel per sample with its seed: time in seconds, frequency
    in Hz at the mel bins' centres (low frequencies at the bottom), level in dB. A matplotlib Figure (no pyplot:
    safe in threads and without a display)."""
    n, n_mels, frames = mels01.shape
    seconds = frames * mel.hop_length / mel.sample_rate
    centres = librosa.mel_frequencies(n_mels + 2, fmin=mel.fmin, fmax=mel.fmax)[1:-1]
    fig = Figure(figsize=(7, 1.2 + 1.6 * n), layout="constrained")
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    ticks = np.linspace(0, n_mels - 1, 5).round().astype(int)
    for k, (ax, spectrogram, seed) in enumerate(zip(axes, mels01, seeds)):
        image = ax.imshow(spectrogram * 100 - 100, origin="lower", aspect="auto", cmap="magma", vmin=-100, vmax=0,
                          extent=(0, seconds, 0, n_mels), interpolation="nearest")
        ax.set_yticks(ticks + 0.5, [f"{centres[i]:.0f}" for i in ticks])
        ax.set_ylabel("frequency (Hz)")
        ax.set_title(f"sample {k}, seed {seed}", fontsize=9, loc="left")
    axes[-1].set_xlabel("time (s)")
    fig.colorbar(image, ax=list(axes), label="level (dB)", shrink=0.9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def spectrograms_png(mels01: np.ndarray, seeds: Sequence[int], mel, path: Path, title: str = "") -> Path:
    """The labelled figure as a PNG, written atomically and without a timestamp (same sounds, same bytes)."""
    fig = spectrogram_figure(mels01, seeds, mel, title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    return Path(path)


def check_sampling(samples: int, seed: int, top_k: int, temperature: float, batch_size: int, n_codes: int,
                   label: Callable[[str], str] = str) -> None:
    """The config's checks of the sampler's values (i2a.spec.config.check_sampling_values), and positive counts."""
    for key, value in (("samples", samples), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label(key)}: {value!r} is not a whole number >= 1")
    check_sampling_values({"temperature": temperature, "top_k": top_k, "seed": seed}, n_codes=n_codes, label=label)


def check_output_folder(out_dir: str | Path, inputs: Sequence[str | Path]) -> None:
    """--out must be a folder (or not exist yet) and hold none of the inputs: outputs written beside them would
    overwrite the user's files and be read as inputs the next time."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ModelError(f"--out {out_dir} is a file, not a folder: give a folder for the outputs")
    target = out_dir.resolve()
    for given in map(Path, inputs):
        if not given.exists():
            continue
        if (given if given.is_dir() else given.parent).resolve() == target:
            raise ModelError(f"--out {out_dir} holds the inputs ({given}): the outputs would overwrite files there "
                             "and be read as inputs next time; give another folder")


class _Outputs:
    """An output folder's record of the files generate wrote (MANIFEST): a file of an output's name that is not in
    it, or was changed since, is the user's and is never overwritten."""

    def __init__(self, folder: Path):
        self.folder = folder
        path = folder / MANIFEST
        try:
            self.written = dict(json.loads(path.read_text())) if path.is_file() else {}
        except (ValueError, TypeError):
            log.warning("%s is unreadable: treating every file in %s as the user's", path, folder)
            self.written = {}

    def foreign(self, names: Iterable[str]) -> list[str]:
        return [name for name in names if (self.folder / name).exists()
                and ((self.folder / name).is_dir() or self.written.get(name) != file_digest(self.folder / name))]

    def record(self, paths: Iterable[Path]) -> None:
        self.written.update({p.name: file_digest(p) for p in paths})
        write_text(self.folder / MANIFEST, json.dumps(self.written, indent=0, sort_keys=True))


def _output_names(stem: str, samples: int, kind: str, mux: bool) -> list[str]:
    names = [f"{stem}_sample{k:02d}.wav" for k in range(samples)] + [f"{stem}_spectrogram.png"]
    if mux and kind == "video":
        names += [f"{stem}_sample{k:02d}.mp4" for k in range(samples)]
    return names


def rows_per_batch(model: SoundModel, batch_size: int | str, samples: int) -> int | str:
    """`sampling.batch_size: auto` as the workflow's sampler sizes it (i2a.sampling.samples.videos_per_batch: an input's
    samples are a video's); a number (or a bad value, for check_sampling to name) as it is."""
    if batch_size != "auto":
        return batch_size
    dtype = autocast_dtype(model.sampling["precision"]) or torch.float32
    return samples * videos_per_batch("auto", samples, model.transformer.gpt, model.S, model.n_tokens, dtype,
                                      torch.device(model.device))


def vocode(model: SoundModel, mel: np.ndarray) -> np.ndarray:
    """One spectrogram's waveform, vocoded alone: Griffin-Lim seeds its random phases per call, so a sound vocoded
    in a batch would depend on its place in it."""
    return np.asarray(model.vocoder(mel[None])[0], dtype=np.float32)


def _draw(model: SoundModel, feats: list[np.ndarray | None], seeds: list[int], top_k: int,
          temperature: float) -> np.ndarray:
    """(rows, n_mels, T) spectrograms, one per row: its input's (D, S) features and its sample's seed."""
    row_seeds = np.asarray(seeds, np.int64)
    if model.encoder is None:
        cond = condition("none", None, row_seeds, model.S, model.feat_dim)
    else:
        cond = torch.from_numpy(np.stack(feats))
    precision = model.sampling["precision"]  # the config's sampling.precision, as sample_tokens runs
    set_precision(precision)
    tokens = model.transformer.sample(cond, model.n_tokens, top_k=top_k, temperature=temperature,
                                      seeds=row_seeds.tolist(), cache=True,
                                      dtype=autocast_dtype(precision) or torch.float32)
    log.debug("sampled %d rows of %s (%s, S=%d)", len(row_seeds), model.name, model.spec.features, model.S)
    return decode_tokens(model.codebook, tokens.cpu().numpy(), progress=False)


@dataclass
class _Job:
    """An input being sampled: its spectrograms for the figure (the first MAX_PANELS) and, with keep_mels, all."""

    prepared: Prepared
    result: Result
    stem: str
    panels: list[np.ndarray] = field(default_factory=list)
    kept: list[np.ndarray] = field(default_factory=list)


def generate(model: SoundModel, inputs: Sequence[str | Path], out_dir: str | Path, samples: int = 1,
             seed: int | None = None, top_k: int | None = None, temperature: float | None = None,
             batch_size: int | str | None = None, mux: bool = False, keep_mels: bool = False,
             progress: bool | None = None) -> list[Result]:
    """Generate `samples` sounds for every input (files or folders) into `out_dir`: per input
    `<stem>_sampleNN.wav` at the config's sample rate, `<stem>_spectrogram.png`, and with `mux` for a video
    `<stem>_sampleNN.mp4` (its clip with the generated sound). Inputs are read one by one and sampled together,
    never more than `batch_size` rows (input, sample) at a time, each written as soon as it is drawn: memory does not
    grow with `samples`. A bad input, or one whose outputs would overwrite a file generate did not write, gets its
    Result.error; the others go on. `progress`: a progress bar (None: when stderr is a terminal; otherwise one log
    line per input). The sampler's values left out are the config's `sampling:` ones, as the workflow samples (a
    checkpoint's own spec keeps the defaults: sampling settings do not retrain a run)."""
    given = {"seed": seed, "top_k": top_k, "temperature": temperature, "batch_size": batch_size}
    seed, top_k, temperature, batch_size = (model.sampling[k] if v is None else v for k, v in given.items())
    batch_size = rows_per_batch(model, batch_size, samples)
    check_sampling(samples, seed, top_k, temperature, batch_size, model.vocab_size)
    check_output_folder(out_dir, inputs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = _Outputs(out_dir)
    files, problems = expand_inputs(inputs)
    results = [Result(path, error=reason) for path, reason in problems]
    for result in results:
        log.error("%s: %s", result.path, result.error)
    stems = dict(zip(files, output_stems(files)))
    seeds = sample_seeds_for_inputs(seed, samples)
    inputs_per_batch = max(1, batch_size // samples)
    show_bar = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=len(files), desc=f"generating ({model.name})", unit="input", disable=not show_bar)
    pending: list[_Job] = []
    finished = 0

    def done(result: Result) -> None:
        nonlocal finished
        finished += 1
        bar.update(1)
        if result.error:
            log.error("%s: %s", result.path, result.error)
        elif not show_bar:
            log.info("[%d/%d] %s -> %s", finished, len(files), result.path,
                     ", ".join(p.name for p in [*result.wavs, result.spectrogram, *result.videos]))

    def finish(job: _Job) -> None:
        result = job.result
        if result.error is None:
            try:
                result.spectrogram = spectrograms_png(np.stack(job.panels), seeds[:MAX_PANELS], model.mel,
                                                      out_dir / f"{job.stem}_spectrogram.png",
                                                      f"{job.result.path.name}: {model.name}"
                                                      + (f" (first {MAX_PANELS} of {samples} samples)"
                                                         if samples > MAX_PANELS else ""))
                if mux and job.prepared.clip is not None:
                    for k, wav_path in enumerate(result.wavs):
                        result.videos.append(mux_audio(job.prepared.clip, wav_path,
                                                       out_dir / f"{job.stem}_sample{k:02d}.mp4"))
            except Exception as err:  # noqa: BLE001 - one input's failure (its mux, the disk) spares the others
                result.error = f"could not write its outputs ({type(err).__name__}: {err})"
            if keep_mels and result.error is None:
                result.mels = np.concatenate(job.kept)
        outputs.record(p for p in [*result.wavs, result.spectrogram, *result.videos] if p is not None)
        done(result)

    def flush() -> None:
        """Draw the pending inputs' rows, batch_size at a time, writing each row's wav as soon as it is drawn."""
        rows = [(job, k) for job in pending for k in range(samples)]
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            mels = _draw(model, [job.prepared.feats for job, _ in chunk], [seeds[k] for _, k in chunk], top_k,
                         temperature)
            for (job, k), mel in zip(chunk, mels):
                if job.result.error is None:
                    try:
                        wav = out_dir / f"{job.stem}_sample{k:02d}.wav"
                        job.result.wavs.append(write_wav(wav, vocode(model, mel), sr=model.mel.sample_rate))
                    except Exception as err:  # noqa: BLE001 - the disk: this input fails, the others go on
                        job.result.error = f"could not write its outputs ({type(err).__name__}: {err})"
                    if k < MAX_PANELS:
                        job.panels.append(mel)
                    if keep_mels:
                        job.kept.append(mel[None])
                if k == samples - 1:
                    finish(job)
        pending.clear()

    with tempfile.TemporaryDirectory(prefix="i2a-generate-") as tmp, logging_redirect_tqdm():
        for i, path in enumerate(files):
            result = Result(path)
            results.append(result)
            bar.set_postfix_str(path.name, refresh=False)
            try:
                prepared = prepare(path, model, Path(tmp) / f"{i:05d}")
            except (InputError, FileNotFoundError) as err:
                result.error = str(err)
            except Exception as err:  # noqa: BLE001 - whatever else one file does, the others are still generated
                result.error = f"could not be read ({type(err).__name__}: {err})"
            if result.error is None:
                result.kind = prepared.kind
                foreign = outputs.foreign(_output_names(stems[path], samples, prepared.kind, mux))
                if foreign:
                    result.error = (f"would overwrite {', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''} "
                                    f"in {out_dir}, which i2a generate did not write: move them or give another --out")
            if result.error:
                done(result)
                continue
            pending.append(_Job(prepared, result, stems[path]))
            if len(pending) >= inputs_per_batch:
                flush()
        flush()
    bar.close()
    return results
