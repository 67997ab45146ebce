"""The verdict: each shadowed upstream's checks, an estimate with its 95% interval graded
against `report.thresholds`, inconclusive while the interval still spans a band edge."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from proxy.report.data import Check, Estimate, PairStats, Status, Unit, UpstreamStats, Verdict
from proxy.report.stats import (
    BOOTSTRAP_MAX_PAIRS,
    Grade,
    Interval,
    grade,
    narrowed,
    newcombe,
    newcombe_paired,
    pairs_to_settle,
    wilson,
)
from proxy.report.text import money, ms, pct, times
from proxy.report.thresholds import Band, ReportSettings, Thresholds

# An inconclusive check outranks a pass: the overall verdict never reads "pass" while some
# check could still go either way. It ranks below a warn or fail the evidence already shows.
_ORDER: Final[dict[str, int]] = {"n/a": 0, "pass": 1, "inconclusive": 2, "warn": 3, "fail": 4}

# The grade a check would get with `growth` times the pairs, its estimate unchanged.
Projection = Callable[[float], Grade]


def worst(statuses: Iterable[Status]) -> Status:
    """The worst of the statuses; "n/a" when there are none."""
    return max(statuses, key=_ORDER.__getitem__, default="n/a")


@dataclass(frozen=True, slots=True)
class _Figure:
    """What one check measured: the estimate, its interval, what it rests on, and how."""

    value: float | None
    interval: Interval | None
    n: int
    grade_at: Projection | None  # None: too few values for an interval yet
    unit: Unit
    method: str
    evidence: str
    note: str | None = None
    what: str = "pairs"  # what `n` counts
    settles: bool = True  # False: more pairs won't make it conclusive, the note says why


def _check(name: str, band: Band, min_pairs: int, figure: _Figure) -> Check:
    notes = [figure.note] if figure.note else []
    if figure.value is None or figure.n == 0:
        return _made(name, "n/a", band, figure, notes, None)
    status: Status = "inconclusive" if figure.grade_at is None else figure.grade_at(1.0)
    if figure.n < min_pairs and status != "fail":
        # Below the floor only a fail already beyond doubt stands: 29 failures in 29 pairs
        # fail, but a pass on a dozen pairs rests on an interval too rough to trust.
        notes.insert(0, f"fewer {figure.what} than min_pairs ({figure.n:,} < {min_pairs})")
        status = "inconclusive"
    more = None
    if status == "inconclusive" and figure.settles:
        more = _more(figure, min_pairs)
        if more is None:
            notes.append("the estimate sits on a band edge: more pairs alone may not settle it")
    return _made(name, status, band, figure, notes, more)


def _made(
    name: str, status: Status, band: Band, figure: _Figure, notes: list[str], more: int | None
) -> Check:
    low, high = figure.interval if figure.interval is not None else (None, None)
    return Check(
        name=name,
        status=status,
        value=figure.value,
        low=low,
        high=high,
        unit=figure.unit,
        warn=band.warn,
        fail=band.fail,
        n=figure.n,
        method=figure.method,
        evidence=figure.evidence,
        note="; ".join(notes) or None,
        more=more,
    )


def _more(figure: _Figure, min_pairs: int) -> int | None:
    floor = max(min_pairs - figure.n, 0)
    grade_at = figure.grade_at
    if grade_at is None:
        return floor or None
    settle = pairs_to_settle(figure.n, lambda growth: grade_at(growth) != "inconclusive")
    return None if settle is None else max(settle, floor)


def judge(
    pair: PairStats,
    shadow: UpstreamStats | None,
    noise: PairStats | None,
    noise_json: tuple[int, int],
    settings: ReportSettings,
) -> Verdict:
    """One shadowed upstream judged on its pairs, its own answers and the noise floor (the
    pooled noise pairs, and the noise copies' JSON-mode answers and how many parsed)."""
    t = settings.thresholds
    m = t.min_pairs
    json_answers, json_ok = (shadow.json_answers, shadow.json_ok) if shadow else (0, 0)
    checks = (
        _check("errors", t.errors, m, _errors(pair, t.errors)),
        _check("latency", t.latency_ratio, m, _latency(pair, t)),
        _check("tokens", t.token_ratio, m, _tokens(pair, t.token_ratio)),
        _check("cost", t.cost_ratio, m, _cost(pair, t.cost_ratio)),
        _check("output shape", t.shape_mismatch, m, _shape(pair, noise, t.shape_mismatch)),
        _check("text agreement", t.text_mismatch, m, _text(pair, noise, t.text_mismatch)),
        _check("streaming", t.stream_broken, m, _streaming(shadow, t.stream_broken)),
        _check("tool calls", t.tool_call_mismatch, m, _tools(pair, noise, t.tool_call_mismatch)),
        _check(
            "JSON output",
            t.json_invalid,
            m,
            _discounted(
                _Share(
                    json_answers - json_ok,
                    json_answers,
                    "shadow JSON-mode answers don't parse",
                    "no JSON-mode answers from the shadow",
                ),
                _Share(noise_json[0] - noise_json[1], noise_json[0], "noise answers don't parse"),
                t.json_invalid,
                "answers",
            ),
        ),
    )
    return Verdict(pair.upstream, worst(c.status for c in checks), checks)


# --- rates -----------------------------------------------------------------------------------


def _errors(pair: PairStats, band: Band) -> _Figure:
    """Shadow minus primary upstream-error rate over the same requests."""
    n = pair.pairs
    shadow = round((pair.other_error_rate or 0.0) * n)
    primary = round((pair.primary_error_rate or 0.0) * n)
    both = pair.both_errors
    if not n:
        return _Figure(None, None, 0, None, "difference", "", "no pairs")

    def grade_at(g: float) -> Grade:
        return grade(
            newcombe_paired(both * g, (shadow - both) * g, (primary - both) * g, n * g),
            band.warn,
            band.fail,
        )

    return _Figure(
        (shadow - primary) / n,
        newcombe_paired(both, shadow - both, primary - both, n),
        n,
        grade_at,
        "difference",
        "Newcombe, paired",
        f"shadow {pct(shadow / n, 2)} vs primary {pct(primary / n, 2)} upstream errors over "
        f"{n:,} pairs ({both:,} failed on both sides)",
    )


@dataclass(frozen=True, slots=True)
class _Share:
    bad: int
    n: int
    says: str  # what `bad of n` are
    none: str = ""  # what to say when n is 0


def _wilson(share: _Share, band: Band, what: str = "pairs") -> _Figure:
    """A share of bad items with Wilson's interval."""
    bad, n = share.bad, share.n
    if not n:
        return _Figure(None, None, 0, None, "share", "", share.none, what=what)
    return _Figure(
        bad / n,
        wilson(bad, n),
        n,
        lambda g: grade(wilson(bad * g, n * g), band.warn, band.fail),
        "share",
        "Wilson",
        f"{bad:,} of {n:,} {share.says}",
        what=what,
    )


def _discounted(copy: _Share, floor: _Share | None, band: Band, what: str = "pairs") -> _Figure:
    """The copy's share of bad items less the noise floor's, with Newcombe's interval for the
    difference; the share alone, and said so, when there is no floor to subtract."""
    bad, n = copy.bad, copy.n
    if floor is None or not floor.n or not n:
        figure = _wilson(copy, band, what)
        if not n:
            return figure
        return _Figure(
            figure.value, figure.interval, n, figure.grade_at, "share", "Wilson",
            figure.evidence, "not discounted: no noise pairs measured how often the primary "
            "disagrees with itself (set shadow.noise_sample)", what,
        )  # fmt: skip
    fb, fn = floor.bad, floor.n
    return _Figure(
        bad / n - fb / fn,
        newcombe(bad, n, fb, fn),
        n,
        lambda g: grade(newcombe(bad * g, n * g, fb * g, fn * g), band.warn, band.fail),
        "difference",
        "Newcombe, less the noise floor",
        f"{bad:,} of {n:,} {copy.says}; less the noise floor: {fb:,} of {fn:,} {floor.says} "
        f"({pct(fb / fn)})",
        what=what,
    )


def _shape(pair: PairStats, noise: PairStats | None, band: Band) -> _Figure:
    same = pair.status_shape
    floor = None
    if noise is not None:
        floor = _Share(noise.pairs - noise.status_shape.agree, noise.pairs, "noise pairs differ")
    return _discounted(
        _Share(
            pair.pairs - same.agree, pair.pairs, "pairs differ in status class or shape", "no pairs"
        ),
        floor,
        band,
    )


def _text(pair: PairStats, noise: PairStats | None, band: Band) -> _Figure:
    text = pair.text
    floor = None
    if noise is not None:
        floor = _Share(
            noise.text.compared - noise.text.agree, noise.text.compared, "noise pairs differ"
        )
    figure = _discounted(
        _Share(
            text.compared - text.agree,
            text.compared,
            "pairs differ in normalised text",
            "no pairs where both answered with text",
        ),
        floor,
        band,
    )
    if figure.grade_at is None:
        return figure
    if floor is not None and floor.n:
        # Wording beyond the floor is worth a look, not a failure: two different models never
        # word alike, and whether the new answers are worse is the judge's question.
        worded = figure.grade_at

        def at_most_warn(g: float) -> Grade:
            grade = worded(g)
            return "warn" if grade == "fail" else grade

        return _Figure(
            figure.value, figure.interval, figure.n, at_most_warn, figure.unit, figure.method,
            figure.evidence, "answers worded differently warn at most: whether they are worse "
            "is for `python -m proxy judge`", settles=figure.settles,
        )  # fmt: skip
    # A sampled answer differs from itself by design: without a floor, different texts are
    # no evidence against the shadow, so this check can pass but never warn or fail.
    sampled = figure.grade_at

    def grade_at(g: float) -> Grade:
        return "pass" if sampled(g) == "pass" else "inconclusive"

    return _Figure(
        figure.value, figure.interval, figure.n, grade_at, figure.unit, figure.method,
        figure.evidence, "no noise pairs: the primary may word its answers differently each "
        "time too, so only a pass is graded (set shadow.noise_sample)", settles=False,
    )  # fmt: skip


def _tools(pair: PairStats, noise: PairStats | None, band: Band) -> _Figure:
    tools = pair.tool_calls
    floor = None
    if noise is not None and noise.tool_calls.compared:
        floor = _Share(
            noise.tool_calls.compared - noise.tool_calls.agree,
            noise.tool_calls.compared,
            "noise pairs with tool calls differ",
        )
    return _discounted(
        _Share(
            tools.compared - tools.agree,
            tools.compared,
            "pairs with tool calls differ in names or argument keys, carry invalid arguments, "
            "or were refused by the shadow",
            "no tool calls in the pairs",
        ),
        floor,
        band,
    )


def _streaming(shadow: UpstreamStats | None, band: Band) -> _Figure:
    # Not an output comparison: no noise floor applies, and none is missing.
    streams, ok = (shadow.streams, shadow.streams_ok) if shadow else (0, 0)
    says = "shadow streams ended without [DONE] or usage"
    return _wilson(_Share(streams - ok, streams, says, "no shadow streams"), band, "streams")


# --- latency and ratios ----------------------------------------------------------------------


def _latency_grade(ratio: Interval, diff_ms: Interval, t: Thresholds) -> Grade:
    """The ratio's band, but a slowdown counts only once it is felt: at least
    `latency_min_ms` and `latency_min_share` slower, beyond doubt."""
    warn = max(t.latency_ratio.warn, 1 + t.latency_min_share)
    fail = max(t.latency_ratio.fail, 1 + t.latency_min_share)
    if ratio.high < warn or diff_ms.high < t.latency_min_ms:
        return "pass"
    felt = diff_ms.low >= t.latency_min_ms
    if felt and ratio.low >= fail:
        return "fail"
    if felt and ratio.low >= warn and ratio.high < fail:
        return "warn"
    return "inconclusive"


def _latency(pair: PairStats, t: Thresholds) -> _Figure:
    """The typical copy/primary ratio and difference on the same request: time to first
    token for streams, total time for the rest."""
    r, d = pair.latency_ratio, pair.latency_diff_ms
    if r.value is None or d.value is None:
        return _Figure(None, None, 0, None, "ratio", "", "no pairs where both answered")
    n, streams = r.n, pair.latency_streams
    interval = _interval(r)
    diff = _interval(d)
    grade_at: Projection | None = None
    if interval is not None and diff is not None:
        ratio_value, diff_value = r.value, d.value

        def grade_at(g: float) -> Grade:
            return _latency_grade(
                narrowed(ratio_value, interval, g), narrowed(diff_value, diff, g), t
            )

    spread = f" (95%: {_signed_ms(d.low)} to {_signed_ms(d.high)})" if diff is not None else ""
    return _Figure(
        r.value,
        interval,
        n,
        grade_at,
        "ratio",
        "sign-test interval of the medians",
        f"typical difference {_signed_ms(d.value)}{spread} on the same request; "
        f"{streams:,} streams by time to first token, {n - streams:,} others by total time; "
        f"a slowdown counts from {ms(t.latency_min_ms)} and {pct(t.latency_min_share, 0)}",
    )


def _signed_ms(x: float | None) -> str:
    return "-" if x is None else ("+" if x >= 0 else "-") + ms(abs(x))


def _interval(e: Estimate) -> Interval | None:
    return None if e.low is None or e.high is None else Interval(e.low, e.high)


def _ratio(e: Estimate, band: Band, evidence: str) -> _Figure:
    interval = _interval(e)
    if e.value is None or interval is None:
        return _Figure(None, None, e.n, None, "ratio", "", evidence)
    value = e.value
    method = "bootstrap over pairs" if e.n <= BOOTSTRAP_MAX_PAIRS else "delta method"
    return _Figure(
        value,
        interval,
        e.n,
        lambda g: grade(narrowed(value, interval, g), band.warn, band.fail),
        "ratio",
        method,
        evidence,
    )


def _tokens(pair: PairStats, band: Band) -> _Figure:
    """Shadow/primary total tokens over the pairs with usage on both sides."""
    p, o = pair.primary_tokens, pair.other_tokens
    k = pair.usage_pairs
    cached = (
        f"; cached prompt {pct(pair.other_cached / o[0] if o[0] else None)} vs "
        f"{pct(pair.primary_cached / p[0] if p[0] else None)}"
        if pair.primary_cached or pair.other_cached
        else ""
    )
    evidence = (
        f"shadow/primary: prompt {times(_over(o[0], p[0]))}, completion "
        f"{times(_over(o[1], p[1]))} over {k:,} pairs with usage on both sides{cached}"
        if k
        else "no pair with usage on both sides"
    )
    return _ratio(pair.token_ratio, band, evidence)


def _cost(pair: PairStats, band: Band) -> _Figure:
    """Shadow/primary cost over the pairs priced on both sides."""
    k = pair.priced_pairs
    evidence = (
        f"per 1,000 requests {money(_per_1k(pair.other_cost, k))} vs "
        f"{money(_per_1k(pair.primary_cost, k))} over {k:,} priced pairs"
        if k
        else "no pair priced on both sides: see the notes on report.pricing"
    )
    return _ratio(pair.cost_ratio, band, evidence)


def _over(a: int, b: int) -> float | None:
    return a / b if b else None


def _per_1k(cost: float | None, n: int) -> float | None:
    return cost / n * 1000 if cost is not None and n else None
