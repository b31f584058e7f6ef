"""From a task (transformation + inputs) to the exact command and the outputs it must leave. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from osa_grid.core import query, templates
from osa_grid.core.metadata import MetaValue, check_metadata
from osa_grid.core.models import Output, Resources, Transformation
from osa_grid.core.planner import FileRecord, common_metadata
from osa_grid.errors import BadInput, TemplateError

# Metadata every output gets, so that analysts and child transformations can tell productions apart.
AUTOMATIC_KEYS = ("production", "transformation")


@dataclass(frozen=True)
class RenderedOutput:
    name: str
    file_name: str
    lfn: str
    metadata: dict[str, MetaValue]
    metadata_file: str | None = None
    verify: str | None = None  # the kind of check the product passes before registration


@dataclass(frozen=True)
class RenderedTask:
    argv: list[str]
    env: dict[str, str]
    outputs: list[RenderedOutput]
    resources: Resources


def render_needs(transformation: Transformation, inputs: Sequence[FileRecord]) -> dict[str, query.Node]:
    """The side-input queries of a task (need name -> query), its inputs' common metadata bound as literals.

    A value that cannot be a query value (a NUL, a boolean), or a name the inputs do not share, is a
    ``BadInput`` naming the need: that task cannot resolve it, whatever the other tasks' values are.
    """
    shared = common_metadata(inputs)
    needs: dict[str, query.Node] = {}
    for name, template in transformation.input.needs.items():
        try:
            needs[name] = query.parse_template(template).bind(shared)
        except BadInput as exc:
            raise TemplateError(f"needs {name}: {exc}") from exc
    return needs


def render_outputs(
    production: str,
    transformation: Transformation,
    task_id: str,
    inputs: Sequence[FileRecord],
    parameters: Mapping[str, MetaValue] | None = None,
) -> list[RenderedOutput]:
    shared = common_metadata(inputs)
    names = _name_values(production, transformation, task_id, shared, parameters)
    return [
        _render_output(output, names, shared, production, transformation.name)
        for output in transformation.outputs
    ]


def _name_values(
    production: str,
    transformation: Transformation,
    task_id: str,
    shared: Mapping[str, MetaValue],
    parameters: Mapping[str, MetaValue] | None,
) -> dict[str, object]:
    """Names for templates: the inputs' common metadata, the production's parameters, then reserved names."""
    return {
        **shared,
        **(parameters or {}),
        "production": production,
        "transformation": transformation.name,
        "version": transformation.version,  # in output paths, a new version writes new LFNs
        "task_id": task_id,
    }


def _render_output(
    output: Output,
    names: Mapping[str, object],
    shared: Mapping[str, MetaValue],
    production: str,
    transformation: str,
) -> RenderedOutput:
    file_name = templates.check_file_name(templates.render(output.file_name, names, f"output {output.name}"))
    # The template's trailing slash only: an empty value must not silently drop a directory level.
    directory = templates.render_directory(
        output.directory.rstrip("/"), names, f"output {output.name} directory"
    )
    lfn = templates.check_relative_path(f"{directory}/{file_name}" if directory else file_name)
    if output.inherit == "all":
        inherited = dict(shared)
    elif output.inherit == "none":
        inherited = {}
    else:
        inherited = {k: shared[k] for k in output.inherit if k in shared}
    metadata = {**inherited, **output.metadata, "production": production, "transformation": transformation}
    metadata_file = None
    if output.metadata_file is not None:
        metadata_file = templates.check_file_name(
            templates.render(output.metadata_file, names, f"output {output.name} metadata_file")
        )
    return RenderedOutput(output.name, file_name, lfn, check_metadata(metadata), metadata_file, output.verify)


def _not_an_option(argument: str, element: str, before: Sequence[str]) -> str:
    """A whole argument from a value must not read as an option: a value ``-rf`` or ``--help`` is refused.

    ``--key={key}`` is always safe (the value cannot start the argument), and so is an argument after
    ``--`` (the end of options).
    """
    if argument.startswith("-") and "--" not in before:
        raise TemplateError(
            f"argument {element} = {argument[:80]!r} starts with '-' and would read as an option: "
            f"write --option={element}, or put '--' before it in the step's argv"
        )
    return argument


def render_task(
    production: str,
    transformation: Transformation,
    task_id: str,
    inputs: Sequence[FileRecord],
    input_paths: Sequence[str],
    workdir: str,
    attempt: int,
    resources: Resources,
    python: str = "python3",
    needs: Mapping[str, str] | None = None,
    parameters: Mapping[str, MetaValue] | None = None,
) -> RenderedTask:
    """The argv (no shell: one element per argument), environment and expected outputs of one attempt.

    ``python`` is the interpreter osa-grid runs under, so that Python steps use the same environment.
    """
    outputs = render_outputs(production, transformation, task_id, inputs, parameters)
    # Reserved names come after the metadata: an input's metadata can never replace them.
    values: dict[str, object] = {
        **_name_values(production, transformation, task_id, common_metadata(inputs), parameters),
        "python": python,
        "workdir": workdir,
        "attempt": attempt,
        "cores": resources.cores,
        "memory_gb": resources.memory_gb,
    }
    values.pop("input", None)  # a metadata key named "input" must not pose as the input path
    if len(input_paths) == 1:
        values["input"] = input_paths[0]
    values.update({f"output.{o.name}": f"{workdir}/{o.file_name}" for o in outputs})
    values.update(
        {f"output.{o.name}.metadata": f"{workdir}/{o.metadata_file}" for o in outputs if o.metadata_file}
    )
    values.update({f"needs.{name}": path for name, path in (needs or {}).items()})
    argv: list[str] = []
    for element in transformation.step.argv:
        if element == "{inputs}":
            argv += [_not_an_option(path, element, argv) for path in input_paths]
        else:
            rendered = templates.render(element, values, "argument")
            argv.append(
                _not_an_option(rendered, element, argv) if templates.whole_placeholder(element) else rendered
            )
    env = {
        key: templates.render(value, values, f"environment {key}")
        for key, value in transformation.step.env.items()
    }
    if not argv or not argv[0]:
        raise TemplateError(
            f"transformation {transformation.name}: the command renders to an empty program name"
        )
    return RenderedTask(argv, env, outputs, resources)
