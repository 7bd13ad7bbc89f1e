"""``scalesearch fit RUNS.csv``: fit a scaling law to runs and extrapolate to a target compute.

The CSV has a header row with columns N, D (or C, training FLOPs, from which
D = C / 6N) and loss; the data-constrained law also needs ``unique`` (unique
tokens). Column names are case-insensitive; commas, semicolons or tabs separate
them, as a spreadsheet's export does (a byte-order mark is skipped).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys

LAWS = ("chinchilla", "kaplan", "data-constrained")
LOSSES = ("huber", "student-t", "approach3")
BOOTSTRAP_SEED = 0
# A parameter whose sd exceeds this fraction of its estimate is reported as poorly determined: its
# 90% interval then spans more than a factor of about 5, and extrapolations through it mean little.
POOR_RELATIVE_SD = 0.5


class InputError(ValueError):
    """A problem with the user's input, reported with exit status 2."""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("fit", help="fit a scaling law to runs (CSV) and extrapolate with intervals",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("runs", metavar="RUNS.csv", help="CSV with columns N, D (or C) and loss (and unique)")
    p.add_argument("--law", choices=LAWS, default="chinchilla", help="law form (default chinchilla)")
    p.add_argument("--loss", choices=LOSSES, default="huber",
                   help="huber or student-t: maximum likelihood with a fitted scale; approach3: Chinchilla's "
                        "summed Huber (default huber)")
    p.add_argument("--target-flops", type=float, metavar="C", help="report the compute-optimal N, D and loss at C")
    p.add_argument("--bootstrap", type=int, default=0, metavar="K",
                   help=f"also refit on K resamples of the runs (seed {BOOTSTRAP_SEED})")
    p.add_argument("--plot", metavar="out.png", help="write a figure of the runs, fit and extrapolation")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=run)


def _number(row: dict, key: str, line: int) -> float:
    raw = (row.get(key) or "").strip()
    try:
        value = float(raw)
    except ValueError:
        raise InputError(f"line {line}: column {key!r} is {raw!r}, not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"line {line}: column {key!r} must be a positive number, got {raw!r}")
    return value


def _delimiter(header: str) -> str:
    """Comma, or the semicolon or tab a spreadsheet writes where a comma is the decimal mark."""
    counts = {sep: header.count(sep) for sep in (",", ";", "\t")}
    return max(counts, key=lambda sep: (counts[sep], sep == ","))


def read_runs(path: str, law: str) -> list:
    """Observations from the CSV at `path`; raises InputError with what to fix."""
    from active_learning.scaling_law import Observation

    try:
        # utf-8-sig: a spreadsheet's CSV export starts with a byte-order mark, which would stick to "N".
        with open(path, newline="", encoding="utf-8-sig") as f:
            first = f.readline()
            f.seek(0)
            reader = csv.DictReader(f, delimiter=_delimiter(first))
            header = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
            rows = list(reader)
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a text (UTF-8) CSV file") from None
    need = ["n", "loss"] + (["unique"] if law == "data-constrained" else [])
    missing = [c for c in need if c not in header]
    if "d" not in header and "c" not in header:
        missing.append("D (or C)")
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}; found {sorted(header) or 'no header'}. "
                         "The first row must name the columns N, D (or C), loss"
                         + (", unique" if law == "data-constrained" else ""))
    runs = []
    for line, row in enumerate(rows, start=2):
        row = {k.strip().lower(): v for k, v in row.items() if k is not None}
        n, loss = _number(row, "n", line), _number(row, "loss", line)
        d = _number(row, "d", line) if "d" in header else _number(row, "c", line) / (6.0 * n)
        unique = _number(row, "unique", line) if law == "data-constrained" else None
        runs.append(Observation(n, d, loss, unique=unique))
    return runs


def _fit(args: argparse.Namespace, runs: list):
    """The fit; the profile-likelihood limits of any parameter it left on its bound; and, where
    the runs determine the law, the profile interval of the loss at --target-flops and (with
    --plot) the profile band along C that the plot draws, ending at that interval."""
    import numpy as np

    from active_learning.fit import FitConfig, fit_law
    from active_learning.plot import PROFILE_POINTS, frontier_flops
    from active_learning.profile import bound_limits, prediction_interval
    from active_learning.scaling_law import get_law

    p = len(get_law(args.law).param_names)
    if len(runs) < p + 1:
        raise InputError(f"the {args.law} law has {p} parameters, so it needs at least {p + 1} runs; "
                         f"{args.runs} has {len(runs)}. Add runs or choose a law with fewer parameters")
    if args.bootstrap < 0:
        raise InputError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if args.target_flops is not None and not args.target_flops > 0:
        raise InputError(f"--target-flops must be > 0, got {args.target_flops}")
    config = FitConfig(law=args.law, loss=args.loss)
    fit = fit_law(runs, config, bootstrap=args.bootstrap, rng=np.random.default_rng(BOOTSTRAP_SEED))
    limits = bound_limits(runs, config, fit)
    interval = band = None
    if args.target_flops is not None and not fit.undetermined:
        interval = prediction_interval(runs, config, fit, args.target_flops, limits)
    if args.plot and not fit.undetermined:
        grid = frontier_flops(runs, args.target_flops, PROFILE_POINTS)
        band = [prediction_interval(runs, config, fit, float(c), limits) for c in grid[:-1]]
        band.append(interval or prediction_interval(runs, config, fit, float(grid[-1]), limits))
    return fit, limits, interval, band


def _estimate(e) -> dict:
    return {"value": e.value, "sd": e.sd, "lo": e.lo, "hi": e.hi}


def result_dict(args: argparse.Namespace, fit, runs: list, limits: dict | None = None, interval=None) -> dict:
    """Everything the command reports, as plain JSON-able values.

    limits: profile.bound_limits of the fit (name -> ProfileLimit), for the parameters at a bound.
    interval: profile.prediction_interval of the loss at --target-flops, or None.
    """
    limits = limits or {}
    boot = fit.bootstrap_params()
    params = {}
    for name, est in fit.params().items():
        params[name] = _estimate(est)
        if name in boot:
            params[name]["bootstrap_lo"], params[name]["bootstrap_hi"] = boot[name]
    at_bound = fit.at_bound()
    for name, side in at_bound.items():
        params[name]["at_bound"] = side
        if name in limits:  # None: the likelihood allows it anywhere up to the other bound
            params[name]["profile_limit"] = limits[name].value
    undetermined = list(fit.undetermined)
    for name in undetermined:
        params[name]["determined"] = False
    out = {"law": args.law, "loss": args.loss, "n_runs": len(runs), "level": fit.level, "params": params,
           "noise_sd": math.sqrt(fit.noise_var), "bootstrap": args.bootstrap,
           "warnings": (_undetermined_warnings(undetermined, runs) + _bound_warnings(at_bound, params)
                        + _warnings(params, runs))}
    if args.target_flops:
        largest = max(6.0 * r.n * r.d for r in runs)
        out["target"] = {"flops": args.target_flops, "times_largest_run": args.target_flops / largest,
                         "determined": not undetermined}
        if undetermined:  # an allocation through a parameter the runs say nothing about is not a number to use
            return out
        a = fit.compute_optimal(args.target_flops)
        out["target"] |= {"n_opt": _estimate(a.n), "d_opt": _estimate(a.d),
                          "tokens_per_parameter": a.tokens_per_parameter, "loss": _estimate(a.loss)}
        if interval is not None:  # None at an end: the runs do not bound the prediction on that side
            out["target"]["loss"] |= {"profile_lo": interval.lo, "profile_hi": interval.hi}
        at_limits = {name: _optimal_loss(fit, lim.theta, args.target_flops)
                     for name, lim in limits.items() if lim.theta is not None}
        if at_limits:  # the pessimistic law the runs still accept, for what the held-fixed interval leaves out
            out["target"]["loss_at_limits"] = at_limits
        if fit.bootstrap is not None:
            losses = [_optimal_loss(fit, theta, args.target_flops) for theta in fit.bootstrap]
            tail = 50.0 * (1.0 - fit.level)
            import numpy as np

            out["target"]["loss"]["bootstrap_lo"] = float(np.nanpercentile(losses, tail))
            out["target"]["loss"]["bootstrap_hi"] = float(np.nanpercentile(losses, 100.0 - tail))
    return out


def _spans(runs: list) -> str:
    n, d = [min(r.n for r in runs), max(r.n for r in runs)], [min(r.d for r in runs), max(r.d for r in runs)]
    return (f"N {n[0]:.3g} to {n[1]:.3g} ({math.log10(n[1] / n[0]):.1f} decades) and D {d[0]:.3g} "
            f"to {d[1]:.3g} ({math.log10(d[1] / d[0]):.1f} decades)")


def _undetermined_warnings(names: list[str], runs: list) -> list[str]:
    """The parameters the runs carry no information on, and why nothing is extrapolated through them."""
    if not names:
        return []
    distinct = f"{len({r.n for r in runs})} distinct N and {len({r.d for r in runs})} distinct D"
    return [f"not determined: {', '.join(names)}. The runs carry no information on them ({distinct}: "
            f"{_spans(runs)}), so their estimates are arbitrary and no compute-optimal allocation or "
            "extrapolation is reported. Add runs at three or more distinct N and three or more distinct D"]


def _open_side(e: dict) -> str:
    """The side of a parameter at its bound that the profile limit is on."""
    return "upper" if e["at_bound"] == "lower" else "lower"


def _limit_phrase(e: dict) -> str:
    """What the profile likelihood says of a parameter at its bound, for a warning."""
    if "profile_limit" not in e:
        return ""
    if e["profile_limit"] is None:
        return " The runs set no limit on the other side within the fit's box."
    side = _open_side(e)
    reach = "up to" if side == "upper" else "down to"
    return (f" Moved off the bound with the rest refitted, it can go {reach} {e['profile_limit']:.3g} before the "
            f"runs object (the {side} end of its profile-likelihood interval).")


def _bound_warnings(at_bound: dict[str, str], params: dict) -> list[str]:
    """One warning per parameter the fit pushed onto its bound: what that means, and what to do."""
    out = []
    for name, side in at_bound.items():
        value = params[name]["value"]
        if name == "E":
            out.append(f"E is at its lower bound ({value:.3g}): these runs show no irreducible loss, so the fit is "
                       "a pure power law. Its Laplace intervals, and the extrapolation's, hold E there, so they "
                       "understate how much higher the loss may be at scale (the profile interval of the predicted "
                       f"loss does not hold it).{_limit_phrase(params[name])} Runs at "
                       "larger N and D, where the loss flattens, determine E; or fit --law kaplan, which has no "
                       "irreducible term")
        else:
            out.append(f"{name} is at its {side} bound ({value:.3g}): the likelihood would move it further, so "
                       "its Laplace interval, and every interval and extrapolation through it, hold it there."
                       f"{_limit_phrase(params[name])} Check the runs for a mistake, or add runs over a wider "
                       "range of N and D")
    return out


def _warnings(params: dict, runs: list) -> list[str]:
    """What the user should know before trusting the fit: the parameters the runs do not pin down."""
    poor = [name for name, e in params.items() if "at_bound" not in e and e.get("determined", True)
            and not e["sd"] <= POOR_RELATIVE_SD * abs(e["value"])]
    if not poor:
        return []
    return [f"poorly determined: {', '.join(poor)} (sd above {POOR_RELATIVE_SD:g} of the estimate). "
            f"The runs span {_spans(runs)}: add runs over a wider range of N and of D/N, or fit a law with "
            "fewer parameters"]


def _optimal_loss(fit, theta, flops: float) -> float:
    """The loss at C's compute-optimal allocation under the law with parameters theta."""
    from active_learning import allocate

    return float(math.exp(allocate.optimal_log_loss(fit.law, theta, flops, unique_tokens=fit.unique_tokens)))


def _times(ratio: float) -> str:
    return f"{ratio:,.0f}x" if ratio >= 10 else f"{ratio:.2g}x"


def _bound_cell(e: dict) -> str:
    """'at its lower bound (<= 0.034)': the bound, and the profile limit on the open side."""
    cell = f"at its {e['at_bound']} bound"
    if "profile_limit" not in e:
        return cell
    if e["profile_limit"] is None:
        return cell + " (no limit within the box)"
    return cell + f" ({'<=' if _open_side(e) == 'upper' else '>='} {e['profile_limit']:.5g})"


def _profile_cell(loss: dict) -> str:
    """'[0.2201, 0.2415]', an end the runs leave open written as the side it is on."""
    lo = "(no lower limit" if loss["profile_lo"] is None else f"[{loss['profile_lo']:.4f}"
    hi = "no upper limit)" if loss["profile_hi"] is None else f"{loss['profile_hi']:.4f}]"
    return f"{lo}, {hi}"


def _print_text(result: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    level = round(100 * result["level"])
    # The level goes in the title so that the interval headers stay short enough for an
    # 80-column terminal: with it in each header, the bootstrap one wrapped onto two lines.
    table = Table(title=f"{result['law']} law, {result['loss']} loss, {result['n_runs']} runs, "
                        f"{level}% intervals")
    table.add_column("parameter")
    table.add_column("estimate", justify="right")
    table.add_column("Laplace", justify="right")
    if result["bootstrap"]:
        table.add_column(f"bootstrap (K={result['bootstrap']})", justify="right")
    for name, e in result["params"].items():
        interval = (_bound_cell(e) if "at_bound" in e else "not determined"
                    if not e.get("determined", True) else f"[{e['lo']:.5g}, {e['hi']:.5g}]")
        cells = [name, f"{e['value']:.5g}", interval]
        if "bootstrap_lo" in e:
            cells.append(f"[{e['bootstrap_lo']:.5g}, {e['bootstrap_hi']:.5g}]")
        table.add_row(*cells)
    console.print(table)
    console.print(f"noise (sd of log loss): {result['noise_sd']:.3g}")
    t = result.get("target")
    if t and not t["determined"]:
        console.print(f"at C = {t['flops']:.3g} FLOPs: not reported, the runs do not determine the law (see the "
                      "warning)")
    elif t:
        loss = t["loss"]
        console.print(f"at C = {t['flops']:.3g} FLOPs: N_opt = {t['n_opt']['value']:.3g} "
                      f"[{t['n_opt']['lo']:.3g}, {t['n_opt']['hi']:.3g}], D_opt = {t['d_opt']['value']:.3g} "
                      f"[{t['d_opt']['lo']:.3g}, {t['d_opt']['hi']:.3g}], "
                      f"{t['tokens_per_parameter']:.3g} tokens/parameter "
                      f"({_times(t['times_largest_run'])} the largest run's compute)")
        extra = f", profile {_profile_cell(loss)}" if "profile_lo" in loss else ""
        extra += f", bootstrap [{loss['bootstrap_lo']:.4f}, {loss['bootstrap_hi']:.4f}]" if "bootstrap_lo" in loss else ""
        console.print(f"predicted loss {loss['value']:.4f} ({level}% interval: Laplace [{loss['lo']:.4f}, "
                      f"{loss['hi']:.4f}]{extra})")
        for name, value in t.get("loss_at_limits", {}).items():
            e = result["params"][name]
            console.print(f"with {name} at {e['profile_limit']:.3g}, the {_open_side(e)} end of its {level}% profile "
                          f"interval, the rest refitted: predicted loss {value:.4f}")
    for warning in result["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)


def run(args: argparse.Namespace) -> int:
    try:
        runs = read_runs(args.runs, args.law)
        fit, limits, interval, band = _fit(args, runs)
        result = result_dict(args, fit, runs, limits, interval)
        if args.plot:
            from active_learning.plot import plot_fit

            try:
                plot_fit(fit, runs, args.plot, target_flops=args.target_flops, profile_band=band)
            except (OSError, ValueError) as e:
                raise InputError(f"cannot write the plot to {args.plot}: {e}") from None
            result["plot"] = args.plot
    except InputError as e:
        print(f"scalesearch fit: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        _print_text(result)
        if args.plot:
            print(f"plot written to {args.plot}")
    return 0
