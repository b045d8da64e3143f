"""``edgeslice devices``: the bundled device profiles (``devices/*.toml``) and their budgets."""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import JsonOpt, QuietOpt, console, emit_json, fmt_bytes, handle_errors, table

app = typer.Typer(no_args_is_help=True, help="Device profiles: flash, RAM and latency budgets for `compress --device`.")


def _quiet(quiet: bool) -> None:
    """``--quiet`` on every command: these draw no progress today, and stay silent if they ever do."""
    from edgeslice._progress import set_enabled

    set_enabled(not quiet)


@app.command("list")
@handle_errors
def list_command(json_out: JsonOpt = False, quiet: QuietOpt = False) -> None:
    """List the bundled device profiles."""
    _quiet(quiet)
    from edgeslice.deploy.devices import get_device, list_devices

    profiles = [get_device(name) for name in list_devices()]
    if json_out:
        emit_json([p.to_dict() for p in profiles])
        return
    rows = [
        [
            p.name,
            fmt_bytes(p.flash_bytes),
            fmt_bytes(p.ram_bytes) + ("" if p.ram_counts_weights else " (activations)"),
            f"{1e3 * p.latency_s:g} ms",
            ", ".join(p.precisions),
            p.opset,
        ]
        for p in profiles
    ]
    console.print(table("device profiles", ["name", "flash", "RAM", "latency", "precisions", "opset"], rows))


@app.command("show")
@handle_errors
def show_command(
    name: Annotated[str, typer.Argument(help="A profile name from `edgeslice devices list`, or a .toml file.")],
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Show one device profile: budgets, throughput figures and where they come from."""
    _quiet(quiet)
    from edgeslice.deploy.devices import get_device

    p = get_device(name)
    if json_out:
        emit_json(p.to_dict())
        return
    ram_what = "weights + peak activations" if p.ram_counts_weights else "peak activations (weights stay in flash)"
    rows = [
        ["description", p.description],
        ["flash (model file)", fmt_bytes(p.flash_bytes)],
        [f"RAM ({ram_what})", fmt_bytes(p.ram_bytes)],
        ["latency (estimated, batch 1)", f"{1e3 * p.latency_s:g} ms"],
        ["precisions", ", ".join(p.precisions)],
        ["ONNX opset (highest)", p.opset],
        ["threads (one inference)", p.threads],
        *[[f"sustained {k} throughput", f"{v / 1e6:g} MMAC/s"] for k, v in p.macs_per_s.items()],
        ["file", p.source],
    ]
    console.print(table(f"device {p.name}", ["", ""], rows))
    console.print(f"[bold]throughput source:[/] {p.macs_per_s_source}", highlight=False)
    if p.notes:
        console.print(f"[bold]notes:[/] {p.notes}", highlight=False)
