"""``vitrt optimize MODEL -o OUT --data digits|PATH --max-drop POINTS | --target-speedup X``: the fastest engine
within an accuracy budget (or the most accurate one at a speed), searched over pruning x token merging x low rank x
2:4 x precision with fine-tuning, and the Pareto front measured.

    OUT/pareto.md, pareto.json, pareto.png   every estimated recipe; the front compiled and measured side by side
    OUT/engine/                              the chosen engine, compiled from its recipe with --verify
    OUT/recipe.json (+ OUT/recipe/)          replays it: vitrt compile MODEL --recipe OUT/recipe.json -o OUT2
    OUT/.search/                             the search's state, recipes and engines (a rerun resumes from it)

The search (:mod:`vitrt.search.halving`): latency of every recipe from the table; recipes the table shows to be
dominated are dropped; held-out top-1 of the rest without fine-tuning; then successive halving — the fastest
admissible recipes get more fine-tuning epochs per trainable stage, the population halves — and the answer is the
fastest recipe within --max-drop on the held-out split (the test split is only used to measure the front).
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from vitrt.compiler.errors import OptionError, VitrtError
from vitrt.compiler.known_models import check_model, is_digits_model
from vitrt.compiler.options import add_command, command_line, option
from vitrt.compiler.output import check_writable_dir, refuse_foreign_dir, start_over

SEARCH_PRECISIONS = ("fp32", "int8", "fp16", "int4w")
DEFAULT_LUT_KEYS = (("fp32", "dense"), ("int8", "dense"))


@dataclass(frozen=True)
class OptimizeConfig:
    model: str | None = option(None, "the model: digits (the shipped digits reference) or a timm model name",
                               positional=True)
    out: Path | None = option(None, "output directory (a search interrupted there is resumed)", flag="-o/--out",
                              type=Path, metavar="OUT")
    data: str = option("digits", "labelled data: digits or an ImageFolder PATH (a held-out part of it is never "
                       "trained on)", metavar="digits|PATH")
    max_drop: float | None = option(None, "largest top-1 loss in points (held-out split) the engine may have",
                                    type=float, metavar="POINTS")
    target_speedup: float | None = option(None, "instead: the most accurate engine at least X times faster than "
                                          "dense (predicted)", type=float, metavar="X")
    backend: str = option("ort", "backend the engine runs on (and the latency table was built on)", choices=("ort",
                                                                                                          "trt"))
    batch: int = option(8, "static batch size", type=int, metavar="N")
    budget_minutes: float | None = option(None, "time budget: rungs stop early to leave time for the measurements",
                                          type=float, metavar="M")
    lut: Path | None = option(None, "latency table (vitrt lut build, --clock cpu --threads 1); default: build "
                              "fp32/dense and int8/dense into OUT/.search/lut.json", type=Path, metavar="LUT")
    precisions: str = option(",".join(SEARCH_PRECISIONS), "precisions to search (comma-separated)", metavar="LIST")
    no_sparsity: bool = option(False, "leave 2:4 out of the search")
    no_lowrank: bool = option(False, "leave low rank out of the search")
    prune_fractions: str | None = option(None, "prune latency fractions to search, comma-separated (default "
                                         "0.7,0.5,0.4,0.3; 1 means no pruning, always included)", metavar="LIST")
    dcvit_macs: str | None = option(None, "DC-ViT MACs fractions to search, comma-separated (default 0.85,0.7 "
                                    "where the blocks are all alike; 1 means no DC-ViT, always included)",
                                    metavar="LIST")
    merge_r: str | None = option(None, "constant token-merge r values to search (DFE schedules, first depth // 6 "
                                 "blocks dense), comma-separated (default: ToMe / DFE / DFE+LGTM at about 3, 6 and "
                                 "9 %% of the tokens per block; 0 means no merging, always included)", metavar="LIST")
    epochs: str = option("0,1,3,6", "fine-tuning epochs per trainable stage at each successive-halving rung "
                         "(comma-separated, rising)", metavar="LIST")
    front_max: int = option(10, "at most this many front points are compiled and measured", type=int, metavar="N")
    front_points: int = option(8, "after the halving, fine-tune recipes in the front's widest latency gaps until it "
                               "has this many points (within --budget-minutes; 0: off)", type=int, metavar="N")
    rounds: int = option(5, "interleaved timing rounds of the measurements", type=int, metavar="N")
    seed: int = option(0, "seed of the planners and the timing order", type=int, metavar="N")
    force: bool = option(False, "start over in a non-empty OUT (deletes it)")
    quiet: bool = option(False, "no progress output")

    def validate(self) -> "OptimizeConfig":
        if not self.model:
            raise OptionError("no model: pass digits or a timm model name")
        if self.out is None:
            raise OptionError("no output directory: pass -o OUT")
        check_model(self.model)
        if (self.max_drop is None) == (self.target_speedup is None):
            raise OptionError("pass exactly one of --max-drop POINTS and --target-speedup X")
        for flag, value in (("--max-drop", self.max_drop), ("--target-speedup", self.target_speedup),
                            ("--budget-minutes", self.budget_minutes)):
            if value is not None and not math.isfinite(value):
                raise OptionError(f"{flag} must be a finite number, got {value}")
        if self.max_drop is not None and self.max_drop < 0:
            raise OptionError(f"--max-drop must be >= 0, got {self.max_drop}")
        if self.target_speedup is not None and self.target_speedup <= 1:
            raise OptionError(f"--target-speedup must be > 1, got {self.target_speedup}")
        if self.seed < 0:
            raise OptionError(f"--seed must be >= 0, got {self.seed}")
        if self.batch < 1 or self.front_max < 2 or self.rounds < 1 or self.front_points < 0:
            raise OptionError("--batch must be >= 1, --front-max >= 2, --rounds >= 1 and --front-points >= 0")
        if self.budget_minutes is not None and self.budget_minutes <= 0:
            raise OptionError(f"--budget-minutes must be positive, got {self.budget_minutes}")
        reserve = measure_reserve(self)
        if self.budget_minutes is not None and 60 * self.budget_minutes <= reserve:
            raise OptionError(f"--budget-minutes {self.budget_minutes:g} leaves no time to search: measuring the front "
                              f"and the chosen engine keeps {reserve / 60:g} min (--front-max "
                              f"{self.front_max}); pass more minutes or a smaller --front-max")
        bad = [p for p in self.precision_list if p not in SEARCH_PRECISIONS]
        if bad or not self.precision_list or len(set(self.precision_list)) < len(self.precision_list):
            raise OptionError(f"--precisions takes a comma-separated subset of {', '.join(SEARCH_PRECISIONS)}, each "
                              f"once; got '{self.precisions}'")
        try:
            self.schedule, self.space_override(None)
        except ValueError:
            raise OptionError("--epochs, --prune-fractions, --dcvit-macs and --merge-r take comma-separated numbers") \
                from None
        if self.backend == "trt":  # not the clock's refusal later: the runtime is what is missing
            from vitrt.compiler.backends import get_backend

            get_backend("trt")
        from vitrt.compiler.lut import LatencyTable, table_key

        # missing, or another file kind (a manifest): refused now, not rows later
        keys = set(LatencyTable.load(self.lut).tables) if self.lut is not None else \
            {table_key(*key) for key in DEFAULT_LUT_KEYS}
        if not any(table_key(p, "dense") in keys for p in self.precision_list):  # every recipe would be dropped
            where = f"--lut {self.lut} has" if self.lut is not None else "the table built without --lut has"
            raise OptionError(f"--precisions {self.precisions}: {where} no latency for any of them (it has "
                              f"{', '.join(sorted(keys))}); add one it has, or pass --lut with a table that has "
                              f"one (vitrt lut build --precision {self.precision_list[0]})")
        from vitrt.pipeline.config import check_data_source, check_real_labels

        check_real_labels("--data", self.data, "accuracy is the constraint")
        check_data_source("--data", self.data, labelled=True)
        return self

    @property
    def precision_list(self) -> list[str]:
        return [p.strip() for p in self.precisions.split(",") if p.strip()]

    @property
    def schedule(self):
        """The successive-halving schedule: the given epochs per rung; 12, 6, 3, ... recipes go on; the slack added
        to --max-drop shrinks 30, 3, 1, ... points to 0 at the last rung (a pruned twin before fine-tuning is 20+
        points off on digits and recovers)."""
        from vitrt.search.halving import Schedule

        epochs = tuple(int(e) for e in self.epochs.split(","))
        if not epochs or any(e < 0 for e in epochs) or list(epochs) != sorted(set(epochs)):
            raise OptionError(f"--epochs must be rising non-negative integers, got '{self.epochs}'")
        keep = tuple(max(2, 12 >> i) for i in range(len(epochs) - 1))
        slack = tuple((30.0, 3.0, 1.0)[i] if i < 3 else 0.5 for i in range(len(epochs) - 1)) + (0.0,)
        return Schedule(epochs, keep, slack)

    def space_override(self, space):
        """``space`` with the --prune-fractions / --dcvit-macs / --merge-r axes replaced where given."""
        from vitrt.search.space import Merge

        def fractions(text, flag):
            if text is None:
                return None
            given = {float(f) for f in text.split(",") if f.strip() and float(f) != 1}
            if any(not 0 < f < 1 for f in given):
                raise OptionError(f"{flag} must lie in (0, 1], got '{text}'")
            return tuple(sorted({None} | given, key=lambda f: -(f or 1)))

        prune, dcvit = fractions(self.prune_fractions, "--prune-fractions"), fractions(self.dcvit_macs, "--dcvit-macs")
        if self.merge_r is not None and any(int(r) < 0 for r in self.merge_r.split(",")):
            raise OptionError(f"--merge-r takes tokens merged per block, >= 0 (0: no merging), got '{self.merge_r}'")
        merge = None if self.merge_r is None else \
            (None,) + tuple(Merge(int(r)) for r in self.merge_r.split(",") if int(r) > 0)
        if space is None:
            return None
        from dataclasses import replace

        return replace(space, **{k: v for k, v in (("prune", prune), ("dcvit", dcvit), ("merge", merge))
                                 if v is not None})

    @property
    def goal_text(self) -> str:
        if self.max_drop is not None:
            return f"fastest engine within {self.max_drop:g} point(s) of top-1"
        return f"most accurate engine at least {self.target_speedup:g}x faster"


def fingerprint(config: OptimizeConfig) -> dict:
    """The arguments a resumed search must share with the one it resumes (paths resolved: the same table given by
    another path is the same table)."""
    data = {k: (str(Path(v).resolve()) if isinstance(v, Path) else v) for k, v in asdict(config).items()
            if k not in ("out", "force", "quiet", "budget_minutes", "front_max", "front_points", "rounds")}
    if config.lut is not None:
        data["lut_mtime"] = Path(config.lut).stat().st_mtime_ns
    return data


def prepare_out(config: OptimizeConfig) -> Path:
    """OUT ready for this search: new, a search to resume, or (--force) a search started over. Only a directory a
    search made (it holds ``.search``) is ever deleted, and never one that holds this run's own inputs."""
    out = Path(config.out)
    check_writable_dir(out)  # not a file; its parents can be created
    refuse_foreign_dir(out, (out / ".search").is_dir(), command="optimize", what="search to resume")
    if out.is_dir() and any(out.iterdir()):
        if config.force:
            from vitrt.pipeline.config import check_outside_out

            for flag, path in (("--lut", config.lut), ("--data", config.data)):
                check_outside_out(flag, path, out)
            start_over(out)
    try:
        (out / ".search").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OptionError(f"cannot create the output directory '{out}' ({exc.strerror}); choose another -o") from None
    return out


@contextlib.contextmanager
def removed_unless_started(out: Path, created: bool, state) -> Iterator[None]:
    """A search refused before it made anything (a table that does not fit, data it cannot read: its work directory
    holds only the empty state) leaves no OUT it created: there is nothing to resume. An interrupted one (Ctrl-C)
    keeps what it has, as it says: a latency table half built is resumed by the same command."""
    try:
        yield
    except VitrtError:
        work = state.path.parent
        if created and not state.done and not state.log and {p.name for p in work.iterdir()} <= {state.path.name}:
            shutil.rmtree(out, ignore_errors=True)
        raise


def load_model(name: str, progress):
    """(timm module, canonical twin) of ``digits`` or a timm model name (random weights)."""
    from vitrt.compiler.models import canonicalize, load_timm_model
    from vitrt.pipeline.driver import resolve_model

    module, _ = resolve_model(name)
    if module is None:
        with progress.step(f"loading {name}"):
            module = load_timm_model(name)
    return module, canonicalize(module).eval()


def latency_table(config: OptimizeConfig, spec, work: Path, progress):
    """The --lut table (checked), or one built for the model into ``work`` (digits grid or the coarse one)."""
    from vitrt.compiler.lut import LatencyTable

    if config.lut is not None:
        table = LatencyTable.load(config.lut)
        table.check(backend=config.backend, batch=config.batch)
        if table.clock != "cpu" and config.backend == "ort":
            progress.log(f"note: {config.lut} holds {table.clock}-clock times; measurements use the cpu clock")
        return table, Path(config.lut)
    from vitrt.benchmarks.lut_build import LUT_TIMING, build_table
    from vitrt.compiler.lut import table_key
    from vitrt.compiler.timing import Timing

    path = work / "lut.json"
    grid = "digits" if is_digits_model(config.model) else "coarse"
    timing = Timing(LUT_TIMING.warmup, LUT_TIMING.iterations, LUT_TIMING.min_seconds, clock="cpu")
    for precision, sparsity in DEFAULT_LUT_KEYS:
        parts = LatencyTable.load(path).tables.get(table_key(precision, sparsity), {}) if path.is_file() else {}
        if parts and all(part.complete for part in parts.values()):
            continue
        with progress.step(f"building the latency table ({precision}/{sparsity}, {grid} grid, cpu clock)"):
            build_table(path, backend=config.backend, grid=grid, batch=config.batch, precision=precision,
                        sparsity=sparsity, threads=1, timing=timing, progress=progress)
    return LatencyTable.load(path), path


def search_space(config: OptimizeConfig, spec):
    from vitrt.search.space import Space, default_space

    space = config.space_override(default_space(spec))
    return Space(prune=space.prune, merge=space.merge, lowrank=(None,) if config.no_lowrank else space.lowrank,
                 sparsity=(False,) if config.no_sparsity else space.sparsity, precision=tuple(config.precision_list),
                 dcvit=space.dcvit)


def run(config: OptimizeConfig, *, module=None, space=None, schedule=None) -> dict:
    """The command; the Python API may pass a timm ``module`` (named ``config.model``), a search ``space`` and a
    halving ``schedule`` instead of the defaults."""
    from vitrt.compiler.progress import progress_for
    from vitrt.pipeline.driver import preprocessing
    from vitrt.pipeline.recipe import write_recipe
    from vitrt.search.evaluate import OFFSET_LIMIT, Evaluator, Target
    from vitrt.search.front import best_per_recipe, pareto, thin, write_report
    from vitrt.search.halving import (Clock, Goal, SearchState, choose, dropped_summary, fill_front, resumable,
                                      run_rungs, structural_filter)
    from vitrt.search.holdout import search_data

    config = config.validate()
    progress = progress_for(config)
    started = time.perf_counter()
    created = not Path(config.out).exists()
    out = prepare_out(config)
    work = out / ".search"
    state = SearchState(work / "state.json", fingerprint(config))
    with removed_unless_started(out, created, state), resumable(state, work):
        previous = sum(entry.get("seconds", 0.0) for entry in state.log if "seconds" in entry)
        if module is None:
            module, twin = load_model(config.model, progress)
        else:
            from vitrt.compiler.models import canonicalize

            twin = canonicalize(module).eval()
        data = search_data(config.data, twin.spec.img, seed=config.seed, preprocessing=preprocessing(module, twin.spec),
                           num_classes=twin.spec.num_classes)
        lut, lut_path = latency_table(config, twin.spec, work, progress)
        evaluator = Evaluator(twin, config.model, data, lut, lut_path, Target(config.batch, config.backend, 1), progress,
                              config.seed)
        recipes = (space or search_space(config, twin.spec)).recipes()
        calibration = next((entry for entry in state.log if "lut_scale" in entry), None)
        if calibration is None:  # a resumed search keeps the factors its estimates were made with
            calibration = calibrate(config, module, evaluator, recipes, work, progress)
            state.note(**calibration)
        evaluator.calibrate(calibration["lut_scale"], calibration.get("merge_factor", 1.0),
                            calibration.get("table_offset_ms", 0.0))
        if evaluator.offset >= OFFSET_LIMIT * evaluator.dense_table_alone_ms * 0.999 or not 0.5 < evaluator.scale < 2.0:
            progress.log(f"note: the table's parts do not add up to this machine's engines (offset "
                         f"{evaluator.offset:.2f} ms a run, scale {evaluator.scale:.2f}); predictions will be rough: "
                         "rebuild it here with vitrt lut build --backend ort --clock cpu --threads 1")
        progress.log(f"latency table calibrated: + {evaluator.offset:.3f} ms a run, token merging "
                     f"{evaluator.merge_factor:.2f}x the table's probe, x {evaluator.scale:.3f} (the dense engine now)")
        goal = Goal(config.max_drop, config.target_speedup)
        progress.log(f"{len(recipes)} recipes; dense: predicted {evaluator.dense_ms:.3f} ms, held-out top-1 "
                     f"{100 * evaluator.dense_holdout:.2f} % ({len(data.holdout)} images)")
        budget = None if config.budget_minutes is None else 60 * config.budget_minutes
        clock = Clock(budget, reserve_s=measure_reserve(config), already_s=previous)

        def save_recipe(estimate) -> str:
            directory = work / "recipes" / f"{estimate.recipe.key}-e{estimate.epochs}"
            write_recipe(directory / "recipe.json", config.model, evaluator.options(estimate.recipe, estimate.epochs),
                         estimate.plans, {"search": estimate.to_dict()})
            estimate.plans = None  # written: free the memory
            return str(directory.relative_to(out))

        try:
            kept, structural = structural_filter(evaluator, recipes, progress)
            progress.log(f"{len(kept)} recipes worth an accuracy estimate ({dropped_summary(structural['notes'])})")
            schedule = schedule or config.schedule
            run_rungs(evaluator, kept, goal, schedule, state, clock, save_recipe, progress)
            if config.front_points:
                fill_front(evaluator, kept, structural["predicted_ms"], schedule.epochs[-1], config.front_points, state,
                           clock, save_recipe, progress)
        except KeyboardInterrupt:  # resumable() says what is kept
            state.note(interrupted=True, seconds=clock.used_s - previous)
            raise
        search_seconds = clock.used_s
        state.note(search_done=True, seconds=search_seconds - previous)

        from vitrt.search.evaluate import Estimate

        estimates = [Estimate.from_dict(e) for e in state.done.values()]
        points = best_per_recipe(estimates)
        chosen = choose(points, goal, evaluator.dense_holdout, evaluator.dense_ms)
        front = thin(pareto(points), config.front_max, [chosen] if chosen else [])
        if chosen is not None and all(p is not chosen for p in front):
            front.append(chosen)
        measured = measure_front(config, module, twin, front, state, evaluator, work, data, progress)
        result = assemble(config, evaluator, data, lut, lut_path, estimates, structural, recipes, front, measured,
                          chosen, search_seconds, work)
        for row, point in zip(result["front"], front):  # where to replay each point from (OUT-relative)
            directory = state.recipe_dir(point.recipe, point.epochs)
            row["recipe"] = f"{directory}/recipe.json" if directory else None
        if chosen is not None:
            result["engine_verify"] = finalize_choice(config, out, state.recipe_dir(chosen.recipe, chosen.epochs),
                                                      module, progress)
        result["total_seconds"] = round(time.perf_counter() - started + previous, 1)
        write_report(out, result)
        progress.log(f"wrote {out}/pareto.md" + (f"; chosen: {chosen.recipe.label()}" if chosen else "; nothing chosen"))
        return result


def measure_reserve(config: OptimizeConfig) -> float:
    """Seconds kept for compiling and measuring the front and the chosen engine (about 40 s an engine here)."""
    return 40.0 * (config.front_max + 2)


def dense_engine(config, module, work: Path) -> Path:
    """The dense fp32 engine of the search (compiled once into ``work/engines/dense``)."""
    from vitrt.pipeline.driver import compile

    out = work / "engines" / "dense"
    if not (out / "manifest.json").is_file():
        compile(module, out, name=config.model, batch=config.batch, backend=config.backend, threads=1, force=True,
                quiet=True)
    return out


def calibrate(config, module, evaluator, recipes, work: Path, progress) -> dict:
    """The table's model-level calibration, from engines of this model timed side by side as the front is: the
    dense engine; the space's smallest pruned engine (no fine-tuning), whose ratio to dense gives the per-run
    offset the table's parts do not hold (``table_offset_ms``, :func:`vitrt.search.evaluate.table_offset`); the
    fp32 merge schedule with the largest merge part, whose ratio gives the factor on the table's merge part
    (``merge_factor``, :func:`vitrt.search.evaluate.merge_factor`); and the dense engine's measured time over its
    calibrated table time (``lut_scale``)."""
    from vitrt.compiler.jsonfile import read_json
    from vitrt.compiler.spec import ViTSpec
    from vitrt.pipeline.driver import compile
    from vitrt.search.evaluate import fit_calibration, lut_scale
    from vitrt.search.measure import measure
    from vitrt.search.space import Recipe

    pruned = sorted({r.prune for r in recipes if r.prune})
    small = Recipe(prune=pruned[0]) if pruned else None
    probe, part = None, 0.0
    for recipe in sorted({Recipe(merge=r.merge) for r in recipes if r.merge is not None}, key=lambda r: r.key):
        merge_ms = evaluator.lut.merge_ms(evaluator.predicted_spec(recipe), clamp=True)
        if merge_ms > part:  # the widest lever: the largest merge part
            probe, part = recipe, merge_ms
    outs = {"dense": dense_engine(config, module, work)}
    engines = {name: recipe for name, recipe in (("small", small), ("merge", probe)) if recipe is not None}
    names = ", ".join(["the dense engine"] + [r.label() for r in engines.values()])
    with progress.step(f"timing {names} to calibrate the latency table"):
        for name, recipe in engines.items():
            outs[name] = work / "engines" / f"calibrate-{recipe.key}"
            compile(module, outs[name], name=config.model, force=True, quiet=True, **evaluator.options(recipe, 0))
        # a ratio of ~1.1-1.3 read from a few short rounds swings by 0.1 on a shared machine; ~20 s buys it steady
        timed = measure(outs, "dense", rounds=max(9, config.rounds), iterations=20, threads=1, seed=config.seed)

    def table_alone(name):
        manifest = read_json(outs[name] / "manifest.json", "a calibration engine's manifest")
        return evaluator.table_ms(engines[name], ViTSpec.from_dict(manifest["spec_after"]), calibrated=False)

    dense_table, out = evaluator.dense_table_alone_ms, {}
    if small is not None:
        out.update(small_probe=small.label(), small_probe_ratio=1.0 / timed["small"].speedup_cpu,
                   small_probe_table_ms=table_alone("small"))
    if probe is not None:
        out.update(merge_probe=probe.label(), merge_probe_ratio=1.0 / timed["merge"].speedup_cpu,
                   merge_probe_table_ms=table_alone("merge"), merge_probe_part_ms=part)
    offset, k = fit_calibration(
        dense_table, small=(out["small_probe_table_ms"], out["small_probe_ratio"]) if small else None,
        merge=(out["merge_probe_table_ms"], part, out["merge_probe_ratio"]) if probe else None)
    if probe is not None:
        out["merge_factor"] = k
    dense_ms = timed["dense"].cpu_ms
    return {"lut_scale": lut_scale(dense_ms, dense_table, offset), "table_offset_ms": offset,
            "dense_measured_ms": dense_ms, "dense_table_ms": dense_table, **out}


def measure_front(config, module, twin, front, state, evaluator, work: Path, data, progress) -> dict:
    """Compile every front point from its recipe and the dense model, and measure them side by side."""
    from vitrt.pipeline.recipe import compile_recipe
    from vitrt.search.measure import measure

    engines = work / "engines"
    outs = {"dense": dense_engine(config, module, work)}
    with progress.bar(len(front), "compiling the front from its recipes") as bar:
        for point in front:
            name = f"{point.recipe.key}-e{point.epochs}"
            recipe = work.parent / state.recipe_dir(point.recipe, point.epochs) / "recipe.json"
            outs[name] = engines / name
            compile_recipe(recipe, out=outs[name], force=True, quiet=True, module=module)
            bar.update(1)
    test = data.test if data.test is not None else data.holdout
    return measure(outs, "dense", test=test, rounds=config.rounds, iterations=5, threads=1, seed=config.seed,
                   progress=progress)


def finalize_choice(config, out: Path, recipe_dir: str, module, progress) -> dict:
    """OUT/recipe.json (+ OUT/recipe/) and OUT/engine compiled from it with --verify."""
    from vitrt.pipeline.recipe import compile_recipe

    source = out / recipe_dir
    target_dir = out / "recipe"
    if target_dir.exists():
        shutil.rmtree(target_dir)
    if (source / "recipe").is_dir():  # a recipe without planned stages (dense, fp32) has no plans beside it
        shutil.copytree(source / "recipe", target_dir)
    shutil.copy2(source / "recipe.json", out / "recipe.json")
    with progress.step("compiling the chosen engine from OUT/recipe.json with --verify"):
        result = compile_recipe(out / "recipe.json", out=out / "engine", force=True, quiet=True, verify=True,
                                module=module)
    return result.manifest["verify"]


def assemble(config, evaluator, data, lut, lut_path, estimates, structural, recipes, front, measured, chosen,
             search_seconds, work: Path) -> dict:
    from vitrt.compiler.jsonfile import read_json
    from vitrt.compiler.spec import ViTSpec

    dense = measured["dense"]
    labels = {r.key: r.label() for r in recipes}
    rows = []
    for point in front:
        name = f"{point.recipe.key}-e{point.epochs}"
        manifest = read_json(work / "engines" / name / "manifest.json", "a front engine's manifest")
        spec = ViTSpec.from_dict(manifest["spec_after"])
        rows.append({**point.to_dict(), "measured": measured[name].to_dict(), "chosen": point is chosen,
                     "table_ms": evaluator.table_ms(point.recipe, spec),
                     "table_alone_ms": evaluator.table_ms(point.recipe, spec, calibrated=False)})
    return {
        "command": command_line(), "model": config.model, "goal": config.goal_text, "backend": config.backend,
        "batch": config.batch, "lut": str(lut_path), "lut_clock": lut.clock, "device": lut.device,
        "lut_scale": evaluator.scale, "dense_table_ms": evaluator.dense_table_alone_ms,
        "table_offset_ms": evaluator.offset, "merge_factor": evaluator.merge_factor,
        "front_scale": dense.cpu_ms / evaluator.dense_table_ms,
        "holdout_images": len(data.holdout), "test_images": len(data.test) if data.test is not None else 0,
        "recipes": len(recipes), "dominated": sum(1 for n in structural["notes"].values() if n.startswith("dominated")),
        "search_seconds": round(search_seconds, 1),
        "dense": {"predicted_ms": evaluator.dense_ms, "holdout_top1": evaluator.dense_holdout,
                  "holdout_loss": evaluator.dense_holdout_loss,
                  "test_top1": dense.top1, "measured": dense.to_dict()},
        "front": rows, "chosen": rows[[p is chosen for p in front].index(True)] if chosen in front else None,
        "estimates": [e.to_dict() for e in estimates], "structural": structural, "labels": labels,
        "method": "latency: the table's prediction and the single-thread CPU time of ONNX Runtime (1 intra-op "
                  "thread), least of 5 runs per round, interleaved rounds, median over rounds; speedup: median of "
                  "per-round ratios to the dense fp32 engine of the same run",
    }


def _run(config: OptimizeConfig) -> int:
    result = run(config)
    chosen = result.get("chosen")
    if chosen is None:
        print(f"no recipe met the goal ({result['goal']}); see {config.out}/pareto.md")
        return 1
    from vitrt.search.space import Recipe

    m = chosen["measured"]
    if chosen["label"] == Recipe().label():  # the dense model: its ratio to itself is timing noise, not a speedup
        print(f"no compressed recipe met the goal ({result['goal']}): the dense fp32 model stays the choice (test "
              f"top-1 {100 * m['top1']:.2f} %); engine in {config.out}/engine, the front in {config.out}/pareto.md")
        return 0
    print(f"chosen: {chosen['label']} ({chosen['epochs']} fine-tuning epochs per stage): {m['speedup_cpu']:.2f}x "
          f"faster than dense fp32 (cpu clock), test top-1 {100 * m['top1']:.2f} % vs "
          f"{100 * result['dense']['test_top1']:.2f} %; engine in {config.out}/engine, recipe {config.out}/recipe.json")
    return 0


def add_subcommands(sub) -> None:
    add_command(sub, "optimize", OptimizeConfig, _run,
                "the fastest engine within an accuracy budget: search pruning x token merging x low rank x 2:4 x "
                "precision with fine-tuning, and measure the Pareto front")
