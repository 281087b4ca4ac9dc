"""``vitrt compile`` and ``vitrt prune-plan``."""

from __future__ import annotations

from pathlib import Path

from vitrt.calib.synthesis_config import SYNTH_PREFIX
from vitrt.compiler.errors import VitrtError
from vitrt.compiler.options import add_arguments, from_args, leaves
from vitrt.compiler.output import check_not_written_entry, check_output_file

# The compile options prune-plan acts on (the model, the planner and its latency table); the rest of vitrt
# compile's would be accepted and ignored
PRUNE_PLAN_OPTIONS = frozenset({"model", "img_size", "checkpoint", "pretrained", "force", "seed", "quiet", "batch",
                                "lut", "prune", "revit", "data", "importance", "eta", "prune_samples"})


# compile's words for these name an output directory and --bench, which prune-plan has not
PRUNE_PLAN_HELP = {"force": "replace an existing PLAN file",
                   "lut": "latency table (vitrt lut build) the search prunes against (--prune)"}


def print_summary(manifest: dict) -> None:
    rows = [("model", manifest["model"]), ("input", "x".join(map(str, manifest["input_shape"]))),
            ("params", f"{manifest['params']['before']:,} -> {manifest['params']['after']:,}"),
            ("GFLOPs/image", f"{manifest['flops']['before'] / 1e9:.3f} -> {manifest['flops']['after'] / 1e9:.3f}")]
    if "verify" in manifest:
        rows.append(("max abs err", f"{manifest['verify']['max_abs_err']:.2e} vs {manifest['verify']['reference']}"))
    accuracy = manifest.get("accuracy", {})
    if "real" in accuracy:
        real = accuracy["real"]
        rows.append(("top-1", f"{100 * real['top1_compiled']:.2f} % (dense {100 * real['top1_dense']:.2f} %) on "
                              f"{real['images']} images of {real['data']}; KL to dense {real['kl_to_dense']:.4f}"))
    if "metric" in accuracy:
        metric = accuracy["metric"]
        # data-free on a synthetic set; on real images it is still label-free (their labels are not read)
        kind = "data-free" if str(metric["data"]).startswith(SYNTH_PREFIX) else "label-free"
        rows.append(("metric loss", f"{metric['compiled']['loss']:.5f} on {metric['images']} images of "
                                    f"{metric['data']} ({kind} estimate; dense {metric['dense']['loss']:.5f})"))
    if "latency" in manifest:
        lat = manifest["latency"]
        rows.append(("latency", f"{lat['median_ms']:.2f} ms median, {lat['p90_ms']:.2f} ms p90, "
                                f"{lat['images_per_s']:.1f} images/s on {lat['device']}"))
        if "versus_dense" in lat:
            rows.append(("speedup", f"{lat['versus_dense']['speedup']:.2f}x over the dense model (side by side)"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def check_known_model(config) -> None:
    """For the models vitrt knows by heart (vitrt.compiler.known_models), every model-dependent option is checked
    before torch is even imported; other models are checked by compile() from timm's config on the meta device."""
    from vitrt.compiler.known_models import check_img_size, check_model_name, known_spec, patch_size

    if config.model:
        check_model_name(config.model)
    patch = patch_size(config.model) if config.checkpoint is None else None  # a checkpoint may change the head
    if patch is not None:
        check_img_size(config.model, config.img_size, patch)
        config.check_against(known_spec(config.model, config.img_size))


def _cmd_compile(args) -> int:
    from vitrt.compiler.output import check_output_dir
    from vitrt.pipeline.config import CompileConfig

    config = from_args(CompileConfig, args).validate()  # options, paths and OUT before the heavy imports
    if config.out is None:
        raise VitrtError("no output directory: pass -o OUT")
    check_output_dir(config.out, config.force)
    if config.recipe is not None:
        from vitrt.compiler.options import leaves
        from vitrt.pipeline.recipe import compile_recipe

        given = {leaf.name: getattr(args, leaf.name) for leaf in leaves(CompileConfig)
                 if getattr(args, leaf.name, None) is not None and leaf.name not in ("model", "recipe")}
        print_summary(compile_recipe(config.recipe, model=config.model, **given).manifest)
        return 0
    from vitrt.compiler.known_models import is_digits_model

    if not is_digits_model(config.model):  # the shipped digits reference: the driver loads it
        check_known_model(config)
    from vitrt.pipeline.driver import compile

    result = compile(config=config)
    print_summary(result.manifest)
    return 0


def _cmd_prune_plan(args) -> int:
    from vitrt.compiler.progress import Progress
    from vitrt.pipeline.config import CompileConfig
    from vitrt.pipeline.driver import inspect_source, load_source
    from vitrt.pipeline.feedback import open_for_compile
    from vitrt.transforms.base import PlanContext
    from vitrt.transforms.prune.plan import alignment_violations
    from vitrt.transforms.prune.planner import structure

    out = Path(args.out) if args.out else None
    config = from_args(CompileConfig, args, out=None)
    if out is None:
        raise VitrtError("no output file: pass -o PLAN")
    if config.prune.fraction is None and not config.prune.revit:  # before validate's "--lut needs --bench"
        raise VitrtError("prune-plan needs --prune FRACTION (with --lut LUT) or --revit")
    config = config.validate()
    check_output_file(out, "-o")  # a directory is refused even with --force; an unwritable path before the search
    check_not_written_entry(out, "-o")  # --force or not: a compile's manifest is no plan's place
    if out.exists() and not config.force:
        raise VitrtError(f"{out} exists: pass --force to replace it")
    for flag, path in (("--lut", config.checks.lut), ("--checkpoint", config.checkpoint)):
        if path is not None and Path(path).resolve() == out.resolve():  # --force would write the plan over it
            raise VitrtError(f"-o {out} is the {flag} the plan is made from; write the plan elsewhere")
    progress = Progress(enabled=not config.quiet)
    from vitrt.pipeline.driver import resolve_model

    module, _ = resolve_model(config.model)  # the digits reference by name, as in vitrt compile
    _, twin = load_source(config, inspect_source(config, module, progress), progress)
    ctx = PlanContext(target=config.target, teacher=twin, lut=open_for_compile(config), lut_path=config.checks.lut,
                      model=config.model, seed=config.seed, progress=progress)
    plan = structure(twin, ctx, config.prune)
    tmp = out.with_name(out.name + ".tmp")
    plan.save(tmp)
    tmp.replace(out)  # atomic: a failed run leaves no half-written plan
    summary = plan.summary()
    print(f"plan: emb {summary['emb']}, heads {summary['heads']}, mlp {summary['mlp']}, attention removed in blocks "
          f"{summary['attention_removed']}; predicted {plan.meta.get('predicted_ms', float('nan')):.3f} ms "
          f"of {plan.meta.get('dense_predicted_ms', float('nan')):.3f} ms -> {out}")
    violations = alignment_violations(plan)
    if violations:
        print(f"alignment: {len(violations)} violation(s), first: {violations[0]}")
    return 0


def add_subcommands(sub) -> None:
    from vitrt.pipeline.config import CompileConfig

    parser = sub.add_parser("compile", help="compile a timm ViT into an engine + manifest",
                            description="Lower a timm ViT to canonical ONNX, run the passes, build the backend "
                                        "artifact and write OUT/manifest.json.")
    add_arguments(parser, CompileConfig)
    parser.set_defaults(func=_cmd_compile)
    parser = sub.add_parser("prune-plan", help="search a latency-aware structural pruning plan and write it as JSON",
                            description="Score NViT importance on the torch twin, search under the latency table, "
                                        "write the kept indices per group (apply with vitrt compile --prune-plan).")
    add_arguments(parser, CompileConfig, skip=[leaf_.name for leaf_ in leaves(CompileConfig)
                                               if leaf_.name not in PRUNE_PLAN_OPTIONS], helps=PRUNE_PLAN_HELP)
    parser.add_argument("-o", "--out", dest="out", metavar="PLAN", help="the plan JSON to write (--force replaces it)")
    parser.set_defaults(func=_cmd_prune_plan)
