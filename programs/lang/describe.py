"""`codeclm graph SPEC`: the checked graph in words (nodes, models, edges, loops) and as Mermaid."""

from __future__ import annotations

from .graph import Graph
from .nodes import JudgeNode, LLMNode, LoopNode, MixNode, Node, SourceNode, SwitchNode


def _what(node: Node) -> str:
    if isinstance(node, JudgeNode):
        kind = "pairwise judge" if node.pair else "judge"
        return f"{kind}, model {node.model}, template {node.template}"
    if isinstance(node, LLMNode):
        extra = f", explodes {node.explode.field} into {node.explode.as_}" if node.explode else ""
        lazy = ", lazy (made on first need)" if node.lazy else ""
        return f"llm, model {node.model}, template {node.template}, parse {node.parse.name}{extra}{lazy}"
    if isinstance(node, SourceNode):
        return f"source, {node.path.name if node.path else f'{len(node.records or [])} records in the spec'}"
    if isinstance(node, MixNode):
        return f"mix of {', '.join(node.collections)} (waits for all of them), fields {', '.join(node.draws)}"
    if isinstance(node, SwitchNode):
        return "switch: " + "; ".join(f"{c.name}" + (f" when {c.when.source}" if c.when else "")
                                      + (f" -> exit {c.exit}" if c.exit else "") for c in node.cases)
    if isinstance(node, LoopNode):
        return f"loop, at most {node.max.source if hasattr(node.max, 'source') else node.max} iterations"
    return node.type


def _reads(graph: Graph, node: Node) -> list[str]:
    own = set(node.body) if isinstance(node, LoopNode) else set()
    names = {r.root for _, r in node.references() if r.root in graph.every and r.root != node.name} - own
    return sorted(names | ({node.for_each} if node.for_each else set()) | set(node.collections) - {""})


def _round_header(graph: Graph, name: str, index: int) -> list[str]:
    """A rounds node's line (before its first round), and a round's: what its pool holds."""
    rounds = graph.rounds[name]
    pool = [copy[rounds.keep] for copy in rounds.copies[:index - 1]]
    head = [f"{name}: rounds, {len(rounds.copies)} ({getattr(rounds.count, 'source', rounds.count)}), each adding "
            f"its {rounds.keep} to the pool later rounds read; body {', '.join(rounds.body)}"] if index == 1 else []
    return [*head, f"  round {index}: pool {' + '.join(pool) if pool else 'empty'}"]


def words(graph: Graph) -> str:
    lines = []

    def describe(node: Node, indent: str) -> None:
        per = f" per record of {node.for_each}" if node.for_each else ""
        reads = _reads(graph, node)
        lines.append(f"{indent}{node.name}: {_what(node)}{per}" + (f"; reads {', '.join(reads)}" if reads else ""))
        if isinstance(node, LoopNode):
            lines.append(f"{indent}  state: {', '.join(node.state)}; next: {', '.join(node.next) or '-'}")
            for body in node.body.values():
                describe(body, indent + "    ")

    current = None
    for node in graph.nodes.values():
        if node.unrolled != current:
            current = node.unrolled
            lines += _round_header(graph, *current) if current else []
        describe(node, "    " if current else "")
    for output in graph.outputs.values():
        where = f" where {output.where.source}" if output.where else ""
        lines.append(f"output {output.name}.jsonl: records of {', '.join(output.sources)}{where}")
    return "\n".join(lines)


def _label(text: str) -> str:
    """Text inside a quoted Mermaid label: its quotes and markup as Mermaid's entity codes (`#` first,
    which starts one), so a name's `"` or `<` cannot end the label or add markup."""
    for char, code in (("#", "#35;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;")):
        text = text.replace(char, code)
    return text


def mermaid(graph: Graph) -> str:
    """The graph as a Mermaid flowchart. Ids are generated (n0, n1, ...): a node name may hold spaces or be
    a Mermaid keyword (`end`), so names appear only in quoted labels."""
    lines = ["flowchart TD"]
    ids: dict[tuple[str, ...], str] = {}

    def ident(*key: str) -> str:
        return ids.setdefault(key, f"n{len(ids)}")

    def shape(node: Node) -> str:
        label = f"{_label(node.name)}<br/>{node.type}" + (f" ({_label(node.model)})" if isinstance(node, LLMNode)
                                                           else "")
        return f'{ident(node.name)}["{label}"]' if not isinstance(node, SwitchNode) else \
            f'{ident(node.name)}{{"{label}"}}'

    current = None
    for node in graph.nodes.values():
        if node.unrolled != current:  # each round is a subgraph
            lines += ["  end"] if current else []
            current = node.unrolled
            if current:
                lines.append(f'  subgraph {ident("round", current[0], str(current[1]))}'
                             f'["{_label(current[0])}: round {current[1]}"]')
        if isinstance(node, LoopNode):
            lines.append(f'  subgraph {ident(node.name)}["{_label(node.name)}: loop"]')
            lines += [f"    {shape(body)}" for body in node.body.values()]
            lines.append("  end")
        else:
            lines.append(f"  {shape(node)}")
    lines += ["  end"] if current else []
    for node in graph.every.values():
        for source in _reads(graph, node):
            if source != node.loop:
                arrow = "==>" if source in node.collections else "-->"
                lines.append(f"  {ident(source)} {arrow} {ident(node.name)}")
    for node in graph.every.values():  # a body switch is a checkpoint: the body nodes after it wait for it
        if isinstance(node, LoopNode):
            body = list(node.body.values())
            for i, switch in enumerate(body):
                if isinstance(switch, SwitchNode):
                    lines += [f"  {ident(switch.name)} -.-> {ident(later.name)}" for later in body[i + 1:]
                              if switch.name not in _reads(graph, later)]
    for output in graph.outputs.values():
        lines += [f'  {ident(source)} --> {ident("output", output.name)}[("{_label(output.name)}.jsonl")]'
                  for source in output.sources]
    return "\n".join(lines)
