"""Command line entry point: `llmtop [options]` (live profiler) and `llmtop <subcommand> ...`.

`main` dispatches on argv[0]: a name in SUBCOMMANDS (replay, report, export, attach, serve, run) runs that
subcommand; anything else is the top-level live profiler — the Textual TUI over a live decode loop,
or with `--once` one headless generation whose full Aggregator report is printed.
Every user mistake surfaces as `llmtop: error: <one line>` (LlmtopError), never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from llmtop.errors import LlmtopError, Terminated, UsageError
from llmtop.stats.views import GROUPS, MODES, SORTS

if TYPE_CHECKING:
    from llmtop.tui.app import LlmtopApp
    from llmtop.tui.session import TuiSession

from llmtop.kernels.factory import DTYPE_CHOICES, check_backend

FORMATS = ("text", "json", "markdown")
DEFAULT_ONCE_PROMPT = "What is the capital of France?"

SUBCOMMAND_HELP = {
    "replay": "replay a recording or an imported trace (Kineto, nsys, metallic, doppler, ...) in the TUI",
    "report": "print the report of a recording or trace headless (text, json, markdown)",
    "diff": "compare two recordings or traces kernel by kernel: deltas and which changes are significant",
    "export": "write a recording or trace as Chrome Trace Event JSON (Perfetto)",
    "attach": "attach to llmtop agents or Prometheus /metrics endpoints (vLLM, llama.cpp, TGI, SGLang)",
    "serve": "OpenAI-style HTTP server on the llmtop engine, with the agent and /metrics",
    "run": "run your own inference (python script.py, vllm serve ...) with op-level timing, no code change",
}


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line) instead of printing usage and exiting; every llmtop
    parser, top level and subcommands, answers --version."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from llmtop import __version__

        self.add_argument("--version", action="version", version=f"llmtop {__version__}",
                          help="print llmtop's version and exit")

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _eprint(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _positive(kind: type, what: str, *, zero_ok: bool = False) -> Callable[[str], Any]:
    def conv(s: str) -> Any:
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, got {s!r}") from None
        if v < 0 or (v == 0 and not zero_ok) or v != v:
            raise argparse.ArgumentTypeError(f"{what} must be {'>= 0' if zero_ok else '> 0'}, got {s}")
        return v

    return conv


def _add_view_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--window", type=_positive(float, "--window"), default=10.0, metavar="S",
                   help="sliding window of the 'window' view, seconds of event time (default 10)")
    p.add_argument("--refresh", type=_positive(float, "--refresh"), default=4.0, metavar="HZ",
                   help="TUI refresh rate (default 4)")


def _add_report_args(p: argparse.ArgumentParser, *, mode_default: str = "cumulative") -> None:
    p.add_argument("--format", default="text", choices=FORMATS, help="output format (default text)")
    p.add_argument("--mode", default=mode_default, choices=MODES,
                   help=f"statistics over everything or the last --window seconds (default {mode_default})")
    p.add_argument("--group", default="kernel", choices=GROUPS, help="kernel table rows (default kernel)")
    p.add_argument("--sort", default="total", choices=SORTS, help="kernel table order (default total)")
    p.add_argument("--filter", default="", metavar="EXPR",
                   help="row filter: substrings, phase:prefill|decode, layer:N|none, class:NAME")
    p.add_argument("--limit", type=_positive(int, "--limit"), default=None, metavar="N",
                   help="show at most N kernel rows in text/markdown")
    _add_wide_arg(p)


def _add_wide_arg(p: Any) -> None:  # a parser or an argument group
    p.add_argument("--wide", action="store_true",
                   help="text reports: print kernel names whole (default: names longer than their column are "
                        "cut in the middle with …; markdown and json always have them whole)")


def _add_peak_arg(p: Any) -> None:  # a parser or an argument group
    p.add_argument("--peak", default=None, metavar="BW,FLOPS",
                   help="the device's roofs for the roofline columns, GB/s and GFLOP/s (default: measured on "
                        "CPU, the part's spec on CUDA, a trace's deviceProperties)")


def _with_peak(source: Any, text: str | None) -> Any:
    """The source with `--peak` as its device_peak (the report's roofline columns divide by it)."""
    from dataclasses import replace

    from llmtop.kernels.peaks import parse_peak

    if not text:
        return source
    return replace(source, extra={**source.extra, "device_peak": parse_peak(text, source.dtype)})


def _add_names_arg(p: argparse.ArgumentParser) -> None:
    from llmtop.traces.open import KERNEL_NAME_STYLES

    p.add_argument("--names", default=KERNEL_NAME_STYLES[0], choices=KERNEL_NAME_STYLES,
                   help="kernel names of formats that record several kinds (nsys): demangled, as nsys stats "
                        "prints them (default), or short, which merges template instances of one kernel")


def _size(s: str) -> int:
    from llmtop.traces.registry import parse_size

    try:
        return parse_size(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--max-bytes: {e}") from None


def _add_max_bytes_arg(p: argparse.ArgumentParser) -> None:
    from llmtop.traces.registry import DEFAULT_MAX_BYTES, DEFAULT_MAX_RATIO, fmt_bytes

    p.add_argument("--max-bytes", type=_size, default=None, metavar="N",
                   help="the largest document a trace file may decompress to, e.g. 4G, 512M (suffixes K, M, "
                        f"G, T; default {fmt_bytes(DEFAULT_MAX_BYTES)}, and at most {DEFAULT_MAX_RATIO} "
                        "times a .gz file's compressed size); N replaces both limits")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: the live profiler (TUI, or headless with --once)."""
    subs = "\n".join(f"  {name:<8} {text}" for name, text in SUBCOMMAND_HELP.items())
    p = _Parser(
        prog="llmtop",
        description="top for LLM inference: profile a live decode loop, every kernel timed.",
        epilog=f"subcommands (llmtop <subcommand> --help):\n{subs}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("model and backend")
    g.add_argument("--backend", default="auto",
                   help="auto (cuda if torch sees a GPU, else cpu), cpu, cuda or wgpu (default auto)")
    g.add_argument("--model", default="default",
                   help="'default' (shipped SmolLM2-135M Q4_1), a .gguf file, an HF checkpoint dir, or a "
                        "preset (llama-3.2-1b, qwen2.5-0.5b, smollm2-135m; random weights)")
    g.add_argument("--dtype", default="auto",
                   help=f"compute dtype ({', '.join(DTYPE_CHOICES)}; auto: bfloat16 on CUDA, else float32)")
    g.add_argument("--threads", type=_positive(int, "--threads"), default=None,
                   help="CPU threads for torch (default: torch's choice)")
    g.add_argument("--adapter", default=None, metavar="NAME",
                   help="--backend wgpu: the WebGPU adapter whose 'device (backend)' contains NAME, e.g. "
                        "Vulkan or OpenGL (default: wgpu's choice)")
    g.add_argument("--no-timing", action="store_true",
                   help="switch per-kernel timing off (step times stay) to measure its cost")
    _add_peak_arg(g)
    g.add_argument("--gpu-sample-every", type=float, default=2.0, metavar="S",
                   help="--backend cuda: profile one step every S seconds under CUPTI for GPU busy vs idle "
                        "(launch-bound) beside the event spans; 0 = never (default 2)")
    w = p.add_argument_group("workload")
    w.add_argument("--prompt", action="append", default=None,
                   help="prompt text (repeatable; default: built-in prompts, or one question with --once)")
    w.add_argument("--prompt-file", default=None, metavar="F",
                   help="prompts, one per line, or JSONL with prompt/text/content/messages")
    w.add_argument("--batch", type=_positive(int, "--batch"), default=1, metavar="N",
                   help="sequences decoded together (default 1)")
    w.add_argument("--max-new-tokens", type=int, default=64, metavar="N",
                   help="tokens to generate per prompt (default 64)")
    w.add_argument("--loop", action=argparse.BooleanOptionalAction, default=None,
                   help="keep generating with fresh prompts until quit (default: on in the TUI)")
    w.add_argument("--no-chat", action="store_true", help="do not wrap prompts in the chat template")
    w.add_argument("--ignore-eos", action="store_true",
                   help="keep generating past end-of-sequence: every round is --max-new-tokens long")
    w.add_argument("--in-process", action="store_true",
                   help="TUI: run the engine in a thread of the UI process instead of a worker process "
                        "(the UI then competes with the decode loop for the GIL)")
    s = p.add_argument_group("sampling")
    s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    s.add_argument("--top-k", type=int, default=0, help="0 = off")
    s.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    s.add_argument("--seed", type=int, default=None, help="sampling seed (also seeds preset weights)")
    o = p.add_argument_group("output")
    o.add_argument("--record", default=None, metavar="FILE",
                   help="tee every event to a llmtop recording (TUI and --once)")
    _add_view_args(o)
    o.add_argument("--once", action="store_true",
                   help="run the prompts once headless and print the generated text and the full report")
    o.add_argument("--format", default="text", help="--once output: text, json or markdown (default text)")
    o.add_argument("--warmup", type=int, default=None, metavar="N",
                   help="untimed rounds before the first timed one, so TTFT is warm (default 1 with --once, "
                        "else 0); the report's tokens.ttft_warm says which")
    _add_wide_arg(o)
    from llmtop.export.options import add_metrics_arguments

    add_metrics_arguments(o, what=" (TUI and --once)")
    return p


# -- engine ------------------------------------------------------------------------------------------
def _check_workload(args: argparse.Namespace) -> None:
    """Everything about the run that can be checked before the (slow) model load."""
    if args.max_new_tokens < 0:
        raise UsageError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    check_backend(args.backend, args.dtype)
    if args.adapter is not None and args.backend != "wgpu":
        raise UsageError("--adapter chooses a WebGPU adapter: it needs --backend wgpu")
    if args.top_k < 0 or not 0.0 < args.top_p <= 1.0 or args.temperature < 0:
        raise UsageError("sampling needs --temperature >= 0, --top-k >= 0 and 0 < --top-p <= 1")
    if args.record:
        parent = Path(args.record).expanduser().resolve().parent
        if not parent.is_dir():
            raise LlmtopError(f"cannot record to {args.record}: directory {parent} does not exist")
    if args.warmup is not None and not 0 <= args.warmup <= 100:
        raise UsageError(f"--warmup must be in 0..100 rounds, got {args.warmup}")
    if args.peak:
        from llmtop.kernels.peaks import parse_peak

        parse_peak(args.peak)  # before the model load: a typo fails in a second, not after it
    if not 0 <= args.gpu_sample_every < float("inf"):
        raise UsageError(f"--gpu-sample-every must be >= 0 seconds, got {args.gpu_sample_every:g}")
    if args.refresh > 60:
        raise UsageError(f"--refresh must be in (0, 60] Hz, got {args.refresh:g}")


def _prompts(args: argparse.Namespace) -> list[str]:
    from llmtop.collectors.engine import load_prompts

    out = list(args.prompt or [])
    if args.prompt_file:
        out += load_prompts(args.prompt_file)
    return out


def engine_spec(args: argparse.Namespace, prompts: list[str] | None = None, loop: bool = False) -> Any:
    """The top-level flags as an EngineSpec (what the engine worker process is started with)."""
    from llmtop.collectors.engine_worker import EngineSpec

    return EngineSpec(
        model=args.model, backend=args.backend, dtype=args.dtype, threads=args.threads, adapter=args.adapter,
        timing=not args.no_timing, seed=args.seed, batch=args.batch, prompts=list(prompts or []),
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, chat=not args.no_chat, loop=loop, ignore_eos=args.ignore_eos,
        gpu_sample_s=args.gpu_sample_every, peak=args.peak,
        warmup=args.warmup if args.warmup is not None else (1 if args.once else 0),
    )


def _interactive() -> bool:
    """A person at a terminal (the TUI's own condition): start-up is shown, not waited through blank."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def _note(text: str) -> None:
    _eprint(f"llmtop: note: {text}")


def build_engine(args: argparse.Namespace, stage: Callable[[str], None] | None = None,
                 note: Callable[[str], None] = _note) -> Any:
    """Ops + model + Engine in this process for the top-level flags (--once, --in-process); `stage`
    hears each start-up stage (the loading screen), `note` what the user should read afterwards."""
    from llmtop.collectors.engine_worker import build_engine as build

    return build(engine_spec(args), note=note, stage=stage)


def _sampling(args: argparse.Namespace) -> Any:
    from llmtop.kernels.base import SamplingParams

    return SamplingParams(args.temperature, args.top_k, args.top_p, args.seed)


def _metrics_server(args: argparse.Namespace) -> Any:
    """--metrics-port: bound now, before the model loads (a port in use is one line), fed once the
    pipeline exists (llmtop/export/http.py); None without the flag."""
    from llmtop.export.options import options_from_args

    opts = options_from_args(args)
    if opts is None:
        return None
    from llmtop.export.http import MetricsServer

    return MetricsServer(opts)


# -- --once ------------------------------------------------------------------------------------------
def run_once(args: argparse.Namespace) -> int:
    from llmtop.once import render_once
    from llmtop.once import run_once as once

    if args.format not in FORMATS:
        raise UsageError(f"unknown format {args.format!r} (choose from {', '.join(FORMATS)})")
    if args.loop:
        raise UsageError("--loop needs the TUI; --once runs each prompt once")
    prompts = _prompts(args) or [DEFAULT_ONCE_PROMPT]
    metrics = _metrics_server(args)
    try:
        res = once(build_engine(args), prompts, batch=args.batch, max_new_tokens=args.max_new_tokens,
                   sampling=_sampling(args), chat=not args.no_chat, record=args.record, window_s=args.window,
                   metrics=metrics)
    finally:
        if metrics is not None:
            metrics.close()
    print(render_once(res, args.format, wide=args.wide), end="", flush=True)
    if res.recording_error:  # the report above is whole; the file is not: a script must not trust it
        print(f"llmtop: error: {res.recording_error}", file=sys.stderr)
        return 1
    return 0


# -- TUI sessions ------------------------------------------------------------------------------------
def build_live_session(args: argparse.Namespace) -> TuiSession:
    """`llmtop [flags]`: engine + process + GPU collectors into the TUI (not started).

    The engine runs in a worker process (blocks here until its model is loaded), or with --in-process
    in a thread of this one.
    """
    from llmtop.collectors.pipeline import child_pipeline, live_pipeline
    from llmtop.stats.aggregator import Aggregator
    from llmtop.tui.provider import PipelineProvider
    from llmtop.tui.session import TuiSession, make_app, window_title

    _check_workload(args)
    if args.max_new_tokens < 1:
        raise UsageError("the live profiler needs --max-new-tokens >= 1")
    # none given: the engine collector's built-in prompts, which in loop mode continue a conversation so
    # the context grows (the attention pane needs it); given prompts are replayed as they are
    prompts = _prompts(args) or None
    loop = True if args.loop is None else args.loop
    agg = Aggregator(window_s=args.window)
    cleanups: list[Callable[[], None]] = []
    metrics = _metrics_server(args)
    if metrics is not None:
        cleanups.append(metrics.close)
    if args.in_process:
        if _interactive():  # the same loading screen, the stages told in this process
            from llmtop.tui.loading import run_loading

            held: list[str] = []  # notes wait until the screen is gone (it draws on the terminal)
            engine = run_loading(lambda say: build_engine(args, stage=say, note=held.append),
                                 "llmtop · loading")
            for text in held:
                _note(text)
        else:
            engine = build_engine(args)
        try:
            p = live_pipeline(engine, agg, prompts=prompts, batch=args.batch,
                              max_new_tokens=args.max_new_tokens, sampling=_sampling(args),
                              chat=not args.no_chat, loop=loop, record=args.record)
        except BaseException:
            engine.ops.close()
            raise
        cleanups.append(engine.ops.close)
    else:
        spec = engine_spec(args, prompts, loop)
        if _interactive():  # a loading screen while the worker starts and reads the model (issue 17)
            from llmtop.tui.loading import run_loading

            notes: list[str] = []

            def build(say: Callable[[str], None]) -> Any:
                say("starting the engine worker (Python, torch)")

                def on_note(text: str) -> None:
                    notes.append(text)  # printed once the loading screen is gone
                    say(text)

                pipe = child_pipeline(spec, agg, record=args.record, on_note=on_note, on_stage=say)
                say("engine ready: starting the TUI (the first prefill follows)")
                return pipe

            p = run_loading(build, "llmtop · loading")
            for text in notes:
                _note(text)
        else:
            p = child_pipeline(spec, agg, record=args.record, on_note=_note)
    if metrics is not None:
        metrics.bind(p, p.counters.latest)
    try:
        app = make_app(PipelineProvider(p, kind="live"), args.refresh, window_title(p.source, "live"))
    except BaseException:
        p.stop()
        for fn in cleanups:
            fn()
        raise
    session = TuiSession(app, p, cleanups=cleanups)
    if args.record:
        session.after.append(lambda: _eprint(
            f"llmtop: recorded {p.status().recorded_records} records to {args.record}"))
    return session


def build_replay_session(args: argparse.Namespace) -> TuiSession:
    """`llmtop replay FILE`: the file through ReplaySource (space pauses, +/- change speed)."""
    from llmtop.collectors.pipeline import replay_pipeline
    from llmtop.stats.aggregator import Aggregator
    from llmtop.tui.provider import PipelineProvider
    from llmtop.tui.session import TuiSession, make_app, window_title

    agg = Aggregator(window_s=args.window)
    names = getattr(args, "names", "demangled")
    max_bytes = getattr(args, "max_bytes", None)
    warned: list[str] = []

    def build(say: Callable[[str], None]) -> tuple[Any, Any, Any]:
        say(f"reading {_files_label(args.file)} ({_files_size(args.file)})")
        p, src = replay_pipeline(args.file, agg, speed=args.speed, kernel_names=names, keep_open=True,
                                 start_s=args.start, max_bytes=max_bytes)
        against = None
        if args.against:  # the baseline, folded whole now: the table compares every row with it
            from llmtop.collectors.replay import load_into

            say(f"reading the baseline {Path(args.against).name} ({_files_size(args.against)})")
            against = Aggregator(window_s=args.window)
            for w in load_into(args.against, against, kernel_names=names, max_bytes=max_bytes).warnings:
                warned.append(f"baseline: {' '.join(str(w).split())}")
        say("starting the TUI")
        return p, src, against

    if _interactive():  # a big file takes a while: the loading screen says what, unless it is quick
        from llmtop.tui.loading import run_loading

        p, src, against = run_loading(build, f"llmtop · replay {_files_label(args.file)}", show_after_s=0.5)
    else:
        p, src, against = build(lambda text: None)
    for w in warned:
        _eprint(f"llmtop: warning: {w}")
    what = f"replay {_files_label(args.file)}"
    if args.against:
        what += f" against {Path(args.against).name}"
    app = make_app(PipelineProvider(p, kind="replay", control=src, against=against), args.refresh,
                   window_title(p.source, what))
    session = TuiSession(app, p)

    def warnings() -> None:
        for w in src.warnings:
            _eprint(f"llmtop: warning: {w}")

    session.after.append(warnings)
    return session


def _files_size(files: str | Path | list[str]) -> str:
    """The bytes the FILE argument(s) hold (a directory: its files), for the loading screen."""
    from llmtop.numfmt import fmt_bytes

    total = 0
    for f in [files] if isinstance(files, str | Path) else list(files):
        p = Path(f)
        with contextlib.suppress(OSError):
            total += (sum(q.stat().st_size for q in p.iterdir() if q.is_file()) if p.is_dir()
                      else p.stat().st_size)
    return fmt_bytes(total)


def _files_label(files: str | Path | list[str]) -> str:
    """The FILE argument(s) for a title: one name, or the first name and how many more."""
    fs = [files] if isinstance(files, str | Path) else list(files)
    return Path(fs[0]).name + (f" +{len(fs) - 1}" if len(fs) > 1 else "")


def build_replay_app(args: argparse.Namespace) -> LlmtopApp:
    """The replay app alone (its pipeline is `app.provider.pipeline`; start/stop it around the app)."""
    return build_replay_session(args).app


def build_attach_session(args: argparse.Namespace) -> TuiSession:

    from llmtop.attach import build_attach_pipeline
    from llmtop.numfmt import printable
    from llmtop.stats.aggregator import Aggregator
    from llmtop.tui.provider import PipelineProvider
    from llmtop.tui.session import TuiSession, make_app

    agg = Aggregator(window_s=args.window)
    p = build_attach_pipeline(args.urls, agg, token=args.token, interval=args.interval,
                              targets_file=args.targets)
    what = [*args.urls, *(["--targets", args.targets] if args.targets else [])]
    title = printable(f"llmtop · attach {' '.join(what)}")
    app = make_app(PipelineProvider(p, kind="attach"), args.refresh, title)
    return TuiSession(app, p)


def run_live(args: argparse.Namespace) -> int:
    from llmtop.tui.session import require_tty

    require_tty()  # before the model load: a pipe should fail in milliseconds
    if args.format != "text":
        raise UsageError("--format applies to --once (the TUI has no output format)")
    if args.wide:
        raise UsageError("--wide applies to --once (the TUI shows names in its own columns)")
    return build_live_session(args).run()


# -- subcommands -------------------------------------------------------------------------------------
def replay_parser() -> argparse.ArgumentParser:
    from llmtop.traces.open import known_formats

    p = _Parser(prog="llmtop replay", description=SUBCOMMAND_HELP["replay"] + ".")
    p.add_argument("file", metavar="FILE", nargs="+",
                   help=f"{known_formats()} (chosen by content); several traces or a directory (one per "
                        "rank) are shown side by side")
    p.add_argument("--speed", type=_positive(float, "--speed", zero_ok=True), default=1.0, metavar="X",
                   help="playback speed, 0 = as fast as possible (default 1; +/- keys change it)")
    p.add_argument("--start", type=_positive(float, "--start", zero_ok=True), default=0.0, metavar="S",
                   help="start S seconds into the replay (what comes before is folded at once); in the TUI "
                        "[ and ] seek -/+10 s, home restarts")
    p.add_argument("--against", default=None, metavar="B",
                   help="a baseline recording or trace: the kernel table gets a `vs B` column, each row's "
                        "change of mean against B (* = significant, as `llmtop diff`), red slower, green "
                        "faster")
    _add_names_arg(p)
    _add_max_bytes_arg(p)
    _add_view_args(p)
    return p


def cmd_replay(argv: list[str]) -> int:
    args = replay_parser().parse_args(argv)
    # opening the file first: a missing or foreign file is the more useful error; run() checks the TTY
    return build_replay_session(args).run()


def report_parser() -> argparse.ArgumentParser:
    from llmtop.report_nsys import COLUMN_SETS

    p = _Parser(prog="llmtop report", description=SUBCOMMAND_HELP["report"] + ".")
    p.add_argument("file", metavar="FILE", nargs="+",
                   help="llmtop recording or any importable trace; several traces or a directory (one per "
                        "rank) are merged, each rank/device/stream on its own track")
    _add_report_args(p)
    p.add_argument("--window", type=_positive(float, "--window"), default=10.0, metavar="S",
                   help="window length for --mode window, seconds of event time (default 10)")
    p.add_argument("--columns", default="auto", choices=COLUMN_SETS,
                   help="kernel table layout: nsys (cuda_gpu_kern_sum columns), llmtop, or auto "
                        "(nsys for GPU traces; default)")
    _add_names_arg(p)
    _add_max_bytes_arg(p)
    _add_peak_arg(p)
    return p


def file_report(args: argparse.Namespace) -> tuple[Any, Any]:
    """(LoadSummary, Snapshot) of a whole file; importer warnings and skips go to stderr, one line each
    (and into the report: cmd_report)."""
    from llmtop.collectors.replay import load_into
    from llmtop.stats.aggregator import Aggregator

    agg = Aggregator(window_s=args.window)
    summary = load_into(args.file, agg, kernel_names=getattr(args, "names", "demangled"),
                        max_bytes=getattr(args, "max_bytes", None))
    if getattr(args, "peak", None):
        agg.set_source(_with_peak(summary.source, args.peak))
    for w in summary.warnings:
        _eprint(f"llmtop: warning: {' '.join(str(w).split())}")
    if summary.skipped:
        _eprint(f"llmtop: warning: skipped {summary.skipped} records that could not be mapped")
    snap = agg.snapshot(mode=args.mode, group=args.group, sort=args.sort, filter=args.filter)
    return summary, snap


def cmd_report(argv: list[str]) -> int:
    from llmtop.report import render, with_notes
    from llmtop.report_nsys import is_gpu_trace, kernel_layers, render_nsys

    args = report_parser().parse_args(argv)
    summary, snap = file_report(args)
    rep = with_notes(snap.report, summary.warnings, summary.skipped, summary.skipped_by)
    nsys = args.columns == "nsys" or (args.columns == "auto" and is_gpu_trace(summary.source, summary.format))
    if args.format == "json":
        out = render(rep, "json")
    elif nsys:
        out = render_nsys(rep, args.format, layers=kernel_layers(snap, args.limit), limit=args.limit,
                          wide=args.wide)
    else:
        out = render(rep, args.format, limit=args.limit, wide=args.wide)
    print(out, end="")
    return 0


def diff_parser() -> argparse.ArgumentParser:
    from llmtop.stats.compare import ALPHA, MIN_EFFECT

    p = _Parser(prog="llmtop diff", description=SUBCOMMAND_HELP["diff"] + ".")
    p.add_argument("a", metavar="A", help="the baseline: an llmtop recording or any importable trace")
    p.add_argument("b", metavar="B", help="the run to compare with A (any format llmtop reads)")
    p.add_argument("--format", default="text", choices=FORMATS, help="output format (default text)")
    p.add_argument("--group", default="kernel", choices=("kernel", "op_class", "layer"),
                   help="rows per kernel, op class or layer (default kernel)")
    p.add_argument("--filter", default="", metavar="EXPR",
                   help="row filter (both sides): substrings, phase:prefill|decode, layer:N|none, class:NAME")
    p.add_argument("--limit", type=_positive(int, "--limit"), default=None, metavar="N",
                   help="show at most N rows in text/markdown (the largest changes)")
    p.add_argument("--alpha", type=float, default=ALPHA, metavar="P",
                   help=f"family-wise significance level, Bonferroni-corrected over rows (default {ALPHA})")
    p.add_argument("--min-effect", type=float, default=MIN_EFFECT * 100, metavar="PCT",
                   help="smallest change of a row's mean that can be significant "
                        f"(default {MIN_EFFECT * 100:g} %%)")
    _add_wide_arg(p)
    _add_names_arg(p)
    _add_max_bytes_arg(p)
    _add_peak_arg(p)
    return p


def cmd_diff(argv: list[str]) -> int:
    from llmtop.collectors.replay import load_into
    from llmtop.report_diff import render_diff
    from llmtop.stats.aggregator import Aggregator
    from llmtop.stats.compare import diff_reports

    args = diff_parser().parse_args(argv)
    if not 0 < args.alpha < 1 or not 0 <= args.min_effect < 1000:
        raise UsageError("--alpha must be in (0, 1) and --min-effect in [0, 1000) percent")
    side: dict[str, Any] = {}
    snaps = []
    for key, path in (("a", args.a), ("b", args.b)):
        agg = Aggregator()
        summary = load_into(path, agg, kernel_names=args.names, max_bytes=args.max_bytes)
        if args.peak:
            agg.set_source(_with_peak(summary.source, args.peak))
        for w in summary.warnings:
            _eprint(f"llmtop: warning: {key.upper()}: {' '.join(str(w).split())}")
        src = summary.source
        side[key] = {"path": str(path), "format": summary.format, "events": summary.events,
                     "label": " · ".join(x for x in (src.backend, src.device, src.model, src.dtype) if x),
                     "warnings": [" ".join(str(w).split()) for w in summary.warnings]}
        snaps.append(agg.snapshot(mode="cumulative", group=args.group, sort="total", filter=args.filter))
    d = diff_reports(snaps[0], snaps[1], alpha=args.alpha, min_effect=args.min_effect / 100)
    out = {"a": side["a"], "b": side["b"], **d}
    print(render_diff(out, args.format, limit=args.limit, wide=args.wide), end="")
    return 0


def export_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="llmtop export", description=SUBCOMMAND_HELP["export"] + ".")
    p.add_argument("file", metavar="FILE", nargs="+",
                   help="llmtop recording or any importable trace; several traces or a directory (one per "
                        "rank) are merged, each rank/device/stream on its own track")
    p.add_argument("-o", "--output", required=True, metavar="OUT.json", help="Chrome trace JSON to write")
    p.add_argument("--tracks", default="layer", choices=("layer", "phase"),
                   help="kernel tracks per decoder layer or per phase (default layer)")
    _add_max_bytes_arg(p)
    return p


def cmd_export(argv: list[str]) -> int:
    from llmtop.traces.chrome_export import export_file
    from llmtop.traces.open import using_limits

    args = export_parser().parse_args(argv)
    files = [args.file] if isinstance(args.file, str | Path) else list(args.file)
    src, out = files if len(files) > 1 else files[0], Path(args.output)
    if out.exists() and any(Path(f).exists() and out.resolve() == Path(f).resolve() for f in files):
        raise UsageError("-o must not be the input file")
    if not out.expanduser().resolve().parent.is_dir():
        raise LlmtopError(f"cannot write {out}: its directory does not exist")
    with using_limits(args.max_bytes):
        counts, warnings = export_file(src, out, track_by=args.tracks)
    for w in warnings:
        _eprint(f"llmtop: warning: {' '.join(str(w).split())}")
    detail = ", ".join(f"{n} {ph}" for ph, n in sorted(counts.items()))
    _eprint(f"llmtop: wrote {out} ({sum(counts.values())} trace events: {detail})")
    return 0


def attach_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="llmtop attach", description=SUBCOMMAND_HELP["attach"] + ".")
    p.add_argument("urls", nargs="*", metavar="URL",
                   help="llmtop://host:port (agent) or http(s)://host:port[/metrics] (Prometheus)")
    p.add_argument("--targets", default=None, metavar="FILE",
                   help="more URLs, one per line (# comments); re-read when it changes: targets come and go")
    p.add_argument("--token", default=None, help="shared token of a token-protected agent")
    p.add_argument("--interval", type=_positive(float, "--interval"), default=1.0, metavar="S",
                   help="Prometheus scrape interval (default 1)")
    p.add_argument("--once", action="store_true", help="collect for --duration seconds, print the report")
    p.add_argument("--duration", type=_positive(float, "--duration"), default=3.0, metavar="S",
                   help="--once collection time (default 3)")
    p.add_argument("--format", default="text", choices=FORMATS, help="--once output format (default text)")
    _add_wide_arg(p)
    _add_view_args(p)
    return p


def _targets_table(rows: list[dict[str, Any]], md: bool) -> str:
    from llmtop.numfmt import printable

    rows = printable(rows)  # labels and errors carry remote text

    def f(v: Any, scale: float = 1.0, nd: int = 2) -> str:
        return "-" if v is None else f"{float(v) * scale:.{nd}f}"

    head = ["Target", "Kind", "Link", "gen tok/s", "gen tokens", "running", "waiting", "TTFT p50 (ms)",
            "ITL p50 (ms)", "dropped"]
    body = [[str(r.get("label")), str(r.get("kind")), str(r.get("status") or r.get("link")),
             f(r.get("gen_tok_s")), f(r.get("gen_tokens"), nd=0), f(r.get("running"), nd=0),
             f(r.get("waiting"), nd=0), f(r.get("ttft_p50_s"), 1e3), f(r.get("itl_p50_s"), 1e3),
             str(r.get("dropped", 0))] for r in rows]
    if md:
        lines = ["## Targets", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
    else:
        widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
        lines = ["Targets"] + ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                               for row in [head, *body]]
    errs = [f"{r.get('label')}: {r.get('error')}" for r in rows if r.get("error")]
    return "\n".join(lines + errs) + "\n\n"


def cmd_attach(argv: list[str]) -> int:
    args = attach_parser().parse_args(argv)
    if not args.urls and args.targets is None:
        raise UsageError("attach needs at least one URL or --targets FILE")
    if not args.once:
        return build_attach_session(args).run()  # URLs are checked while building, the TTY in run()
    from llmtop.attach import attach_once, require_reached
    from llmtop.report import render
    from llmtop.stats.aggregator import Aggregator

    rep = attach_once(args.urls, Aggregator(window_s=args.window), token=args.token,
                      duration_s=args.duration, interval=args.interval, targets_file=args.targets)
    require_reached(rep, args.duration)  # no target ever answered: one error line, exit 2
    if args.format == "json":
        print(render(rep, "json"), end="")
    else:
        print(_targets_table(list(rep.get("attach") or []), args.format == "markdown")
              + render(rep, args.format, wide=args.wide), end="")
    return 0


def run_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="llmtop run", description=SUBCOMMAND_HELP["run"] + ".",
                usage="llmtop run [options] -- COMMAND [ARGS...]")
    p.add_argument("--once", action="store_true",
                   help="no TUI: wait for COMMAND to exit, then print the report")
    p.add_argument("--format", default="text", choices=FORMATS, help="--once output format (default text)")
    p.add_argument("--record", default=None, metavar="FILE", help="keep the instrumented process's recording")
    p.add_argument("--agent", default=None, metavar="HOST:PORT",
                   help="where the instrumented process's agent listens (default: a free loopback port)")
    p.add_argument("--ops", default="all", choices=("all", "layers"),
                   help="timed granularity: every op (matmul, attention, norm, ...) or whole decoder layers")
    _add_wide_arg(p)
    _add_view_args(p)
    from llmtop.export.options import add_metrics_arguments

    add_metrics_arguments(p, what=" while COMMAND runs")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                   help="the program to run, e.g. python my_script.py, or vllm serve MODEL --enforce-eager")
    return p


def cmd_run(argv: list[str]) -> int:
    from llmtop.run_command import build_run_session, run_once

    args = run_parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise UsageError("llmtop run needs a command after --, e.g. llmtop run -- python my_script.py")
    from llmtop.export.options import options_from_args

    metrics = options_from_args(args)
    if args.once:
        return run_once(command, ops=args.ops, agent=args.agent, fmt=args.format, record=args.record,
                        window_s=args.window, wide=args.wide, metrics=metrics)
    from llmtop.tui.session import require_tty

    require_tty()
    session = build_run_session(command, ops=args.ops, agent=args.agent, record=args.record,
                                window_s=args.window, refresh=args.refresh, metrics=metrics)
    return session.run()


def serve_parser() -> argparse.ArgumentParser:
    from llmtop.serve import add_serve_arguments

    p = _Parser(prog="llmtop serve", description=SUBCOMMAND_HELP["serve"] + ".")
    add_serve_arguments(p)
    return p


def cmd_serve(argv: list[str]) -> int:
    from llmtop.serve import serve_main

    return serve_main(serve_parser().parse_args(argv))


# name -> handler(argv_rest) -> exit code
SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {
    "replay": cmd_replay,
    "report": cmd_report,
    "diff": cmd_diff,
    "export": cmd_export,
    "attach": cmd_attach,
    "serve": cmd_serve,
    "run": cmd_run,
}
# name -> its parser, for tests and docs that need the exact Namespace a subcommand builds
PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "llmtop": build_parser,
    "replay": replay_parser,
    "report": report_parser,
    "diff": diff_parser,
    "export": export_parser,
    "attach": attach_parser,
    "serve": serve_parser,
    "run": run_parser,
}


def _run_main(argv: list[str]) -> int:
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    if argv and not argv[0].startswith("-"):
        raise UsageError(f"unknown command {argv[0]!r} (choose from {', '.join(SUBCOMMANDS)}, or options)")
    args = build_parser().parse_args(argv)
    _check_workload(args)
    if args.once:
        return run_once(args)
    return run_live(args)


@contextlib.contextmanager
def _terminate_like_interrupt() -> Iterator[None]:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        raise Terminated(signum)

    sigs = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {s: signal.signal(s, handler) for s in sigs}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with _terminate_like_interrupt():
            return _run_main(argv)
    except Terminated as e:
        return 128 + e.signum
    except LlmtopError as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        _eprint(f"llmtop: error: {msg}")
        return e.exit_code
    except SystemExit as e:  # --help / --version: argparse's own clean exit
        return e.code if isinstance(e.code, int) else 0
    except KeyboardInterrupt:
        # Recordings are closed by the finally blocks on the way here; nothing recorded is lost.
        return 130
    except BrokenPipeError:  # `llmtop report F | head`: the reader left; not an error worth a traceback
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
