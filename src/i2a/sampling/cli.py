"""`i2a generate` and `i2a app`: sound for your own pictures and videos, from a run of the study or a released
SpecVQGAN model (docs/generate.md).

    i2a generate --config config/demo.yaml --run clip-s5 --out generated/ photo.jpg clip.mp4 folder/

Only the standard library and YAML are imported before the arguments are parsed, so that --help is fast; the
model's modules (torch) load once they are needed.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

import yaml

from i2a.sampling.errors import EXIT_INPUT_ERRORS, EXIT_MODEL_ERROR, ModelError
from i2a.spec.config import SEED_LIMIT, read_merged

log = logging.getLogger("i2a.sampling")


def runs_epilog(config_file: str | Path) -> str:
    """--help's list of the config's runs, each with its backbone and whether it is trained here. Read as YAML only
    (no schema, no torch) so that --help stays fast."""
    path = Path(config_file)
    try:
        config = read_merged(path)
        runs = [entry for entry in config.get("runs") or [] if isinstance(entry, dict) and "name" in entry]
    except (OSError, yaml.YAMLError) as err:
        return f"The runs of {path} cannot be listed ({type(err).__name__}): give --config FILE before --help."
    lines = [f"runs of {path} (--run NAME):"]
    for entry in runs:
        name = entry["name"]
        if entry.get("source") == "released":
            lines.append(f"  {name:<20} the authors' released {entry.get('released')}")
            continue
        ckpt = Path(str(config.get("results", "results"))) / "runs" / name / "best.ckpt"
        state = "trained" if ckpt.is_file() else f"not trained here yet (no {ckpt})"
        features = entry.get("features", "?")
        lines.append(f"  {name:<20} {'no features (baseline)' if features == 'none' else features + ' features'}, "
                     f"{state}")
    lines.append("released models (--released NAME, with --config config/config.yaml): resnet50_1feat, "
                 "resnet50_5feat, resnet50_212feat, no_feats")
    return "\n".join(lines)


def _parser(epilog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="i2a", description="Image-to-audio with the study's models.")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser(
        "generate", help="sound for your own images and videos", epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Generate sounds for images (JPEG, PNG, WebP) and videos with a run's best checkpoint or a "
                    "released SpecVQGAN transformer. Run it in the workflow's folder: the config's paths are "
                    "relative to it. Exit status 1 when some inputs could not be used (the others are generated), "
                    "2 when the model could not be loaded.")
    app = commands.add_parser(
        "app", help="a local web page to try a model", epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve a page (http://127.0.0.1:PORT/) where you upload an image or a short video and hear, see "
                    "and download the sounds generated for it. Run it in the workflow's folder.")
    gen.add_argument("inputs", nargs="+", type=Path, help="images, videos, or folders of them")
    for sub in (gen, app):
        sub.add_argument("--config", default="config/config.yaml",
                         help="the workflow config the model was made with, merged over the config.yaml beside it "
                              "as snakemake --configfile merges over config/config.yaml (default: %(default)s)")
        model = sub.add_mutually_exclusive_group(required=True)
        model.add_argument("--run", help="a run of the config: its best checkpoint, the config's codebook and "
                                         "vocoder")
        model.add_argument("--released", metavar="NAME",
                           help="the authors' transformer and VAS codebook: resnet50_1feat, resnet50_5feat, "
                                "resnet50_212feat or no_feats")
        sub.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: a GPU when there is one)")
    app.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine "
                                                          "only)")
    app.add_argument("--port", type=int, default=8000, help="(default: %(default)s; 0: any free port)")
    app.add_argument("--samples", type=int, default=2, help="sounds per upload offered (default: %(default)s)")
    app.add_argument("--max-upload-mb", type=float, default=50, help="largest upload taken (default: %(default)s)")
    gen.add_argument("--out", type=Path, default=Path("generated"), help="output folder (default: %(default)s)")
    gen.add_argument("--samples", type=int, default=1, help="sounds per input (default: %(default)s)")
    gen.add_argument("--seed", default=None, help="sampling seed (default: the config's sampling.seed)")
    gen.add_argument("--top-k", type=int, default=None, help="top-k sampling (default: the config's sampling.top_k)")
    gen.add_argument("--temperature", type=float, default=None,
                     help="sampling temperature (default: the config's sampling.temperature)")
    gen.add_argument("--batch-size", type=int, default=None,
                     help="sequences sampled at once (default: the config's sampling.batch_size)")
    gen.add_argument("--mux", action="store_true", help="also write each video input's clip with the generated "
                                                         "sound as an mp4")
    return parser


def _option(key: str) -> str:
    """A sampling value's name on the command line: top_k -> --top-k."""
    return "--" + key.replace("_", "-")


def _seed(text: str | None, default: int) -> int:
    """--seed as a whole number; text that is not one (1e23, 2.5) is named in the error, as the range check does."""
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ModelError(f"--seed: {text!r} is not a whole number from 0 to {SEED_LIMIT - 1}") from None


def _serve(args: argparse.Namespace) -> int:
    """i2a app: load the model, then serve its page until interrupted."""
    from i2a.sampling.app import App, make_server
    from i2a.sampling.loading import load_released_model, load_run_model
    from i2a.spec.config import load_config

    try:
        config = load_config(args.config)
        if args.run is not None:
            model = load_run_model(config, args.run, args.device, config_file=args.config)
        else:
            model = load_released_model(config, args.released, args.device)
        server = make_server(App(model, samples=args.samples, seed=config["sampling"]["seed"],
                                 max_upload=int(args.max_upload_mb * 2 ** 20)), args.host, args.port)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as err:
        log.error("error: %s", err)
        return EXIT_MODEL_ERROR
    host, port = server.server_address[:2]
    log.info("i2a app: %s on http://%s:%d/ (Ctrl-C stops it)", model.name, host, port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    epilog = None
    if {"-h", "--help"} & set(argv):  # list the runs of the config given (or the default one)
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config", default="config/config.yaml")
        epilog = runs_epilog(pre.parse_known_args(argv)[0].config)
    args = _parser(epilog).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    logging.getLogger("i2a").setLevel(logging.INFO)  # our progress lines; the libraries' chatter stays out
    if args.command == "app":
        return _serve(args)
    # the model's modules (torch, the backbones) once the arguments are known to be good
    from i2a.sampling.loading import load_released_model, load_run_model
    from i2a.sampling.loop import check_output_folder, check_sampling, generate
    from i2a.spec.config import load_config

    try:
        config = load_config(args.config)
        sampling = config["sampling"]
        values = {"samples": args.samples, "seed": _seed(args.seed, sampling["seed"]),
                  "top_k": sampling["top_k"] if args.top_k is None else args.top_k,
                  "temperature": sampling["temperature"] if args.temperature is None else args.temperature,
                  "batch_size": sampling["batch_size"] if args.batch_size is None else args.batch_size}
        check_sampling(**values, n_codes=None, label=_option)  # before the model loads: fail fast
        check_output_folder(args.out, args.inputs)
        if args.run is not None:
            model = load_run_model(config, args.run, args.device, config_file=args.config)
        else:
            model = load_released_model(config, args.released, args.device)
        check_sampling(**values, n_codes=model.vocab_size, label=_option)  # top-k within its codebook
    except (ValueError, FileNotFoundError, RuntimeError) as err:  # ModelError, ConfigError, and the loaders' own
        log.error("error: %s", err)
        return EXIT_MODEL_ERROR
    log.info("%s: %s features, S=%d, %d tokens; %s vocoder; %d sample(s) per input -> %s", model.name,
             model.spec.features, model.S, model.n_tokens, config["vocoder"]["kind"], args.samples, args.out)
    results = generate(model, args.inputs, args.out, mux=args.mux, **values)
    failed = [r for r in results if r.error]
    log.info("%d of %d inputs generated into %s%s", len(results) - len(failed), len(results), args.out,
             f"; {len(failed)} could not be used (see the errors above)" if failed else "")
    return EXIT_INPUT_ERRORS if failed else 0


if __name__ == "__main__":
    sys.exit(main())
