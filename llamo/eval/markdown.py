"""Markdown of the evaluation results: the run report (`format_report`) and the probe's table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llamo.eval.language import LanguageProbeResult

__all__ = ["R3_MARGIN", "BLEU4_MARGIN", "format_language_table", "format_report", "format_value"]

#: "clearly above" rules of the report's checks; stated in the report's checks
R3_MARGIN = 0.05

BLEU4_MARGIN = 0.02


def format_value(value: Any, digits: int = 3, scale: float = 1.0) -> str:
    if value is None:
        return "-"
    return f"{scale * float(value):.{digits}f}"


def _pm(row: Mapping[str, Any], key: str, digits: int = 3, scale: float = 1.0) -> str:
    """``value ± ci95`` of ``row[key]`` (``row[key + "_ci95"]``), ``value`` without an interval, ``-`` without a
    value; both x ``scale``."""
    value, ci = row.get(key), row.get(f"{key}_ci95")
    if value is None:
        return "-"
    if ci is None:
        return format_value(value, digits, scale)
    return f"{format_value(value, digits, scale)} ± {format_value(ci, digits, scale)}"


def _section_header(lines: list[str], section: Mapping[str, Any]) -> bool:
    lines += ["", f"## {section['title']}", "", f"Wall time: {section['seconds']:.1f} s."]
    if section.get("protocol"):
        lines += ["", f"Protocol: {section['protocol']}."]
    if section["skipped"]:
        lines += ["", f"**Skipped:** {section['skipped']}"]
        return False
    return True


def _checks(tables: Mapping[str, Any]) -> list[str]:
    """The report's "clearly above the baseline" checks, stated plainly."""
    lines = []
    t2m = tables["t2m"]
    if not t2m["skipped"]:
        shuffled, ours = t2m["rows"][1], t2m["rows"][2]
        margin = ours["R@3"] - shuffled["R@3"]
        # a single-run protocol (MotionStreamer's) has no interval: the fixed margin alone
        needed = max(R3_MARGIN, (ours["R@3_ci95"] or 0.0) + (shuffled["R@3_ci95"] or 0.0))
        ok = margin > needed
        lines.append(
            f"- Text-to-motion R@3 {ours['R@3']:.3f} vs shuffled-real {shuffled['R@3']:.3f}: margin {margin:+.3f} "
            f"(needs > {needed:.3f}) — **{'PASS' if ok else 'FAIL'}**"
        )
    else:
        lines.append("- Text-to-motion R@3 vs shuffled-real: not measured (Table 3 skipped)")
    m2t = tables["m2t"]
    if not m2t["skipped"]:
        constant, ours = m2t["rows"][-2], m2t["rows"][-1]
        margin = ours["bleu_4"] - constant["bleu_4"]
        # sampled captions (--gen_seeds K > 1) carry an interval; greedy ones and the constant baseline do not
        needed = max(BLEU4_MARGIN, ours.get("bleu_4_ci95") or 0.0)
        ok = margin > needed
        lines.append(
            f"- Motion-to-text BLEU@4 {100 * ours['bleu_4']:.2f} vs constant caption {100 * constant['bleu_4']:.2f}: "
            f"margin {100 * margin:+.2f} (needs > {100 * needed:.2f}) — **{'PASS' if ok else 'FAIL'}**"
        )
    else:
        lines.append("- Motion-to-text BLEU@4 vs constant caption: not measured (Table 4 skipped)")
    lang = tables["language"]
    if not lang["skipped"] and lang["mot"]:
        match = lang.get("fingerprints_match")  # absent from results written before fingerprints existed
        if not lang["identical"] or match is False:
            verdict = "FAIL"
        else:
            verdict = "PASS" if match else "UNVERIFIED"
        lines.append(
            f"- Language probe, MoT model equals its base model: text path "
            f"{'identical to' if lang['identical'] else 'NOT identical to'} the rebuilt base; "
            f"{_fingerprint_clause(lang)} — **{verdict}**"
        )
    return lines


def _fingerprint_clause(lang: Mapping[str, Any]) -> str:
    """Whether the rebuilt base is the base the handoff was trained on, for the language check."""
    match, base = lang.get("fingerprints_match"), lang.get("base_fingerprint")
    if match is None:
        hint = f" (`llamo record-fingerprint {lang['stage_dir']}`)" if lang.get("stage_dir") else ""
        return f"base fingerprint not verified: the handoff records none{hint}"
    if match:
        return f"base fingerprint {base} matches the handoff's"
    return f"base fingerprint {base} != the handoff's {lang['handoff_fingerprint']} (a different base)"


def format_report(results: Mapping[str, Any]) -> str:
    """Markdown report of `evaluate_run` results."""
    t = results["tables"]
    lines = [
        f"# LLaMo evaluation of `{results['run']}`",
        "",
        f"Data `{results['data']}` (split `{results['settings']['split']}`), LLaMo stage "
        f"`{results['llamo_stage'] or '-'}`, evaluated {results['created']}; total evaluation wall time "
        f"{results['seconds']:.1f} s.",
    ]
    gen = results.get("generation")  # absent from results written before the sweep existed
    if gen:
        lines += [
            "",
            f"Generation setting (Table 3, samples): {gen['steps']} Euler steps, guidance scale "
            f"{gen['guidance_scale']:g}, unconditional source `{gen['cfg']}`, noise temperature "
            f"{gen.get('temperature', 1.0):g} — {gen['source']}.",
        ]
    train = results.get("training", {})
    if train:
        lines += ["", "## Training wall time", "", "| stage | max_steps | fit wall time |", "| --- | ---: | ---: |"]
        for name, entry in train.items():
            seconds = "-" if entry["seconds"] is None else f"{entry['seconds']:.0f} s"
            steps = "-" if entry["max_steps"] is None else str(entry["max_steps"])
            if "reused_from" in entry:
                seconds += f" (reused: linked to `{entry['reused_from']}`)"
            lines.append(f"| {name} | {steps} | {seconds} |")
        lines += [
            "",
            "(from each stage's `config.yaml`, written at fit start, to its `handoff.safetensors`, "
            "written at fit end; process start-up not included)",
        ]

    lines += ["", "## Checks", "", *_checks(t)]

    if _section_header(lines, t["reconstruction"]):
        lines += [
            "",
            "| | MPJPE ↓ | MPJRE ↓ | sJPE ↓ | T.Down | Comp. ↓ |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in t["reconstruction"]["rows"]:
            lines.append(
                f"| {r['name']} | {r['mpjpe']:.2f} | {r['mpjre']:.2f} | {r['sjpe']:.3f} | {r['t_down']} | "
                f"×{100 * r['comp']:.2f}% |"
            )
    lines += [f"- {n}" for n in t["reconstruction"]["notes"]]

    if _section_header(lines, t["t2m"]):
        # MultiModality only when measured (--mm_texts, llamo.eval.gen_seeds)
        mm = any("MultiModality" in r for r in t["t2m"]["rows"])
        lines += [
            "",
            "| Methods | FID ↓ | R@1 ↑ | R@2 ↑ | R@3 ↑ | MM-D ↓ | Div → |" + (" MModality ↑ |" if mm else ""),
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if mm else ""),
        ]
        for r in t["t2m"]["rows"]:
            keys = ("FID", "R@1", "R@2", "R@3", "MM-Dist", "Diversity") + (("MultiModality",) if mm else ())
            cells = [_pm(r, k) for k in keys]
            lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    lines += [f"- {n}" for n in t["t2m"]["notes"]]

    if _section_header(lines, t["m2t"]):
        lines += [
            "",
            "| Methods | Bleu@1 ↑ | Bleu@4 ↑ | Rouge ↑ | Cider ↑ | BertScore ↑ | R@3 ↑ | MM-D ↓ |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in t["m2t"]["rows"]:
            # the LLaMo row has a ± with --gen_seeds K > 1 (llamo.eval.m2t)
            cells = [_pm(r, k, 2, 100) for k in ("bleu_1", "bleu_4", "rouge_l", "cider", "bertscore_f1")]
            cells += [_pm(r, "R@3"), _pm(r, "MM-Dist")]
            lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
        preds = list(t["m2t"].get("predictions", {}).items())[:5]
        if preds:
            lines += ["", "First predictions:", ""] + [f"- `{i}`: {p!r}" for i, p in preds]
    lines += [f"- {n}" for n in t["m2t"]["notes"]]

    if _section_header(lines, t["language"]):
        lines += ["", "| model | probe acc ↑ | correct/total | perplexity ↓ |", "| --- | ---: | ---: | ---: |"]
        for r in t["language"]["rows"]:
            lines.append(
                f"| {r['name']} | {100 * r['accuracy']:.1f}% | {r['correct']}/{r['total']} | {r['perplexity']:.4f} |"
            )
    lines += [f"- {n}" for n in t["language"]["notes"]]

    if _section_header(lines, t["samples"]):
        lines.append("")
        for r in t["samples"]["rows"]:
            lines.append(f'- `{r["file"]}` ({r["frames"]} frames, test item `{r["id"]}`): "{r["prompt"]}"')
            if r.get("png"):  # absent from results written before the filmstrips
                lines += ["", f"  ![{r['id']}: filmstrip of the generated motion]({r['png']}) [gif]({r['file']})", ""]
    skipped = [f"- {s['title']}: {s['skipped']}" for s in t.values() if s["skipped"]]
    lines += ["", "## Skipped", ""] + (skipped or ["- nothing"])
    return "\n".join(lines) + "\n"


def format_language_table(rows: Sequence[tuple[str, LanguageProbeResult]]) -> str:
    """Markdown table ``model | probe acc | correct/total | perplexity``, one row per ``(name, result)``."""
    if not rows:
        raise ValueError("format_language_table needs at least one (model name, result) row")
    lines = ["| model | probe acc | correct/total | perplexity |", "| --- | ---: | ---: | ---: |"]
    for name, result in rows:
        lines.append(
            f"| {name} | {100 * result.accuracy:.1f}% | {result.correct}/{result.total} | {result.perplexity:.4f} |"
        )
    return "\n".join(lines)
