"""``supertiny serve`` and ``supertiny demo``: the long-running entry points."""

import click

from supertiny.cli.app import pass_settings
from supertiny.config import Settings
from supertiny.demo.plan import ENGINE_CHOICES, LLM_RUNTIMES, LLM_SCHEMES, DemoPlan
from supertiny.errors import SupertinyError
from supertiny.runtime.model_memory import format_bytes, memory_budget
from supertiny.serve.auth import AUTH_MODES
from supertiny.store.engine import describe_url


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int, help="Server processes (each loads its own models).")
@click.option("--preload/--no-preload", default=True, show_default=True,
              help="Open the models of every active route at startup.")
@click.option("--model-concurrency", type=int,
              help="Requests one in-process model takes at once (default: its dynamic batch size, or 1 without "
                   "dynamic batching). Models on an engine take up to 64.")
@click.option("--model-memory", metavar="SIZE",
              help="Memory the opened models may take (8GiB, 8000MB, bytes, or 40% of system memory); past it the "
                   "least recently used models not answering are closed. Default: SUPERTINY_MODEL_MEMORY, else "
                   "half of system memory.")
@click.option("--max-tokens-limit", default=4096, show_default=True, type=int)
@click.option("--auth", type=click.Choice(AUTH_MODES), default="auto", show_default=True,
              help="required: every request needs an API key; open: none does; auto: required from the first "
                   "key created on (revoking keys never opens the server).")
@click.option("--outage-grace-s", default=300.0, show_default=True, type=float,
              help="While the database is unreachable, serve from the cached policies and keys this many seconds "
                   "(requests are logged once it is back); then answer 503.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@pass_settings
def serve(settings: Settings, host: str, port: int, workers: int, preload: bool, model_concurrency: int | None,
          model_memory: str | None, max_tokens_limit: int, auth: str, outage_grace_s: float, log_level: str) -> None:
    """Serve the OpenAI-compatible API, routing each request by its route's stored policy.

    \b
    POST /v1/chat/completions   model = a route name (`supertiny policy list`)
    GET  /v1/models             the routes with an active policy
    GET  /health, GET /metrics  status and Prometheus metrics (summed over all --workers)
    """
    import os
    import shutil
    import tempfile

    import uvicorn

    from supertiny.serve.app import OPTIONS_ENV, ServeOptions, create_app
    from supertiny.serve.metrics import MULTIPROCESS_ENV
    from supertiny.store.session import open_store

    if workers < 1:
        raise SupertinyError("--workers must be at least 1")
    budget = memory_budget(model_memory) if model_memory else settings.model_memory_bytes  # a bad size fails here
    open_store(settings)  # migrate once, before any worker starts
    options = ServeOptions(preload=preload, local_model_concurrency=model_concurrency, model_memory=model_memory,
                           max_tokens_limit=max_tokens_limit, auth=auth, outage_grace_s=outage_grace_s)
    click.echo(f"supertiny serving on http://{host}:{port}/v1 ({workers} worker{'s' if workers > 1 else ''}, "
               f"store {describe_url(settings.database_url)}, models within {format_bytes(budget)} per worker)",
               err=True)
    if workers == 1:
        os.environ.pop(MULTIPROCESS_ENV, None)  # one process: its own registry, as in tests and embedding
        uvicorn.run(create_app(settings, options), host=host, port=port, log_level=log_level)
        return
    os.environ["SUPERTINY_DATABASE_URL"] = settings.database_url
    os.environ["SUPERTINY_HOME"] = str(settings.home)
    os.environ[OPTIONS_ENV] = options.to_env()
    # the workers count into files here and /metrics sums them; fresh each run, as prometheus_client requires
    metrics_dir = tempfile.mkdtemp(prefix="supertiny-prometheus-")
    os.environ[MULTIPROCESS_ENV] = metrics_dir
    try:
        uvicorn.run("supertiny.serve.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                    log_level=log_level)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


_DEMO, _QUICK = DemoPlan(), DemoPlan.quick()


@click.command()
@click.option("--quick", is_flag=True, help="A small subset for a first look (about 10 minutes on 2 CPU cores).")
@click.option("--harvest-tasks", type=int, help=f"BFCL train tasks the teacher answers (default "
              f"{_DEMO.harvest_tasks}; quick {_QUICK.harvest_tasks}).")
@click.option("--harvest-samples", type=int, help=f"Answers the teacher samples per train task, of which the "
              f"verifier keeps what passes (best-of-N; default {_DEMO.harvest_samples}).")
@click.option("--eval-per-category", type=int, help=f"BFCL test tasks per category in each evaluation (default "
              f"{_DEMO.eval_per_category}; quick {_QUICK.eval_per_category}).")
@click.option("--sft-epochs", type=float, help=f"Epochs of supervised fine-tuning (default {_DEMO.sft_epochs:g}).")
@click.option("--kd-epochs", type=float, help=f"Epochs of logit distillation after sft (default "
              f"{_DEMO.kd_epochs:g}; 0 skips kd).")
@click.option("--quantize", type=click.Choice(["w8a8", "int8", "int4", "none"]),
              help=f"Quantization (default {_DEMO.quantize}: int8 weights and activations, served by a vLLM engine "
              "where one runs; int8 and int4 are weight-only and run in-process).")
@click.option("--prune-to", metavar="PARAMS", help="Also prune the trained student to this size and heal it "
              "(e.g. 0.4B; adds about 10 minutes).")
@click.option("--requests", type=int, help=f"Real requests sent through the server (default {_DEMO.requests}; "
              f"quick {_QUICK.requests}).")
@click.option("--eval-each-step", is_flag=True, help="Also evaluate the student after sft, before kd.")
@click.option("--llm-runtime", type=click.Choice(LLM_RUNTIMES), help="What runs the teacher where it answers "
              "(harvest, its evaluation, the cascade's LLM tier): llama-cpp (a q8_0 GGUF export; needs `make "
              "llamacpp`), transformers (the default: faster on long prompts on a 2-core AVX2 CPU), or auto "
              "(llama-cpp when installed).")
@click.option("--llm-quantize", type=click.Choice(LLM_SCHEMES), help="The teacher answers as its W8A8 export "
              "(int8 weights and activations, made once), or as pulled (none); auto (the default): W8A8 where the "
              "CPU has int8 dot-product instructions (VNNI, AMX), which make it faster on the engine. Every LLM row "
              "of the report and the route's LLM tier use it; kd reads the pulled weights.")
@click.option("--engine", type=click.Choice(ENGINE_CHOICES), help="auto (the default): the teacher, and students "
              "evaluated on enough tasks, answer through a vLLM engine where one can be installed and run here "
              "(built once under the data dir); off: every model in-process.")
@click.option("--guided/--no-guided", default=None, help="Where the teacher runs on an engine, the route's LLM tier "
              "answers under the tools' JSON Schemas (the default), or freely.")
@click.option("--guided-harvest", is_flag=True, default=None, help="The teacher also answers each train task once "
              "under the tools' JSON Schemas, and the snapshot takes what passes of both (doubles the harvest's "
              "time).")
@click.option("--route", help="Route the demo's policy is stored under (default demo).")
@pass_settings
def demo(settings: Settings, quick: bool, quantize: str | None, llm_quantize: str | None, **sizes: object) -> None:
    """Run the whole pipeline end to end on the embedded default and print a report.

    \b
    harvest BFCL with the 1.5B teacher -> verified snapshot -> train the 0.5B student (sft; --kd-epochs adds kd)
    -> quantize -> evaluate teacher / base / trained / compressed -> cascade policy with a calibrated
    threshold -> serve and answer real requests through the OpenAI client -> report.md + PNGs.

    Re-running reuses every finished step (a changed size re-runs only the steps it changes); Ctrl-C
    leaves a state the next run resumes from. The first run downloads ~1.6 GB of models and, where vLLM runs,
    builds its engine environment (~3 GB); the report says which engine served each step.
    """
    from supertiny.demo.runner import run_demo

    overrides = {key: value for key, value in sizes.items()
                 if value is not None and (value is not False or key == "guided")}
    for key, scheme in (("quantize", quantize), ("llm_quantize", llm_quantize)):
        if scheme is not None:
            overrides[key] = "" if scheme == "none" else scheme
    for key in ("harvest_tasks", "harvest_samples", "eval_per_category", "requests"):
        if key in overrides and int(overrides[key]) < 1:  # type: ignore[call-overload]
            raise SupertinyError(f"--{key.replace('_', '-')} must be at least 1")
    plan = DemoPlan.quick(**overrides) if quick else DemoPlan(**overrides)
    try:
        run_demo(settings, plan)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: finished steps are kept; run the same command again to resume", err=True)
        raise SystemExit(130) from None
