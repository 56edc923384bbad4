"""A real third-party MCP client (the Python `mcp` SDK) against nanny, run by tests/mcp.rs.

    client.py http URL MODE
    client.py stdio NANNY_BIN URL MODE

MODE is `auto` (protocol 2026-07-28, found through server/discover) or `legacy` (the
initialize handshake, 2025-11-25). The daemon has the bundled examples (image-gen and
llm-chat need the GPU) and `crasher`, which already crashed (exit code 3). Every check
asserts with a message; the last line printed is `ok MODE: N checks`.
"""

import asyncio
import json
import sys

from mcp import Client
from mcp.client.stdio import StdioServerParameters

TOOLS = {
    "start_service", "stop_service", "restart_service", "list_services", "get_service_status",
    "get_logs", "gpu_status", "recent_events", "rediscover", "diagnose_service",
}
PROMPTS = {"available_services", "start_image_generation", "gpu_holder", "last_service_logs"}
checks = 0


def check(cond, what, detail=""):
    global checks
    if not cond:
        raise AssertionError(f"{what}: {detail}")
    checks += 1


def text_of(result):
    return "\n".join(getattr(c, "text", "") for c in result.content)


async def call(client, tool, args, error=False):
    result = await client.call_tool(tool, args)
    check(result.is_error == error, f"{tool}({args}) isError={error}", text_of(result))
    if not error:
        check(isinstance(result.structured_content, dict), f"{tool} gives structured output", result)
    return result


async def prompt_text(client, name):
    result = await client.get_prompt(name)
    return "\n".join(m.content.text for m in result.messages)


async def scenario(client, mode):
    tools = (await client.list_tools()).tools
    check({t.name for t in tools} == TOOLS, "the tools", sorted(t.name for t in tools))
    for t in tools:
        schema = json.dumps(t.input_schema)
        check("$ref" not in schema and "$defs" not in schema, f"{t.name}'s input schema is flat", schema)
        check(t.description and t.annotations is not None, f"{t.name} is described and annotated", t)
        check(t.output_schema is not None, f"{t.name} declares its structured output", t)
    by_name = {t.name: t for t in tools}
    check(by_name["list_services"].annotations.read_only_hint is True, "list_services is read-only")
    check(by_name["stop_service"].annotations.destructive_hint is True, "stop_service is destructive")

    resources = {r.uri for r in (await client.list_resources()).resources}
    for uri in ["service://status", "service://metrics", "service://events", "service://crasher"]:
        check(uri in resources, f"resource {uri} listed", resources)
    templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
    check({"service://logs/{name}", "service://{name}"} <= templates, "resource templates", templates)
    prompts = {p.name for p in (await client.list_prompts()).prompts}
    check(prompts == PROMPTS, "the prompts", prompts)

    listed = (await call(client, "list_services", {})).structured_content
    names = {s["name"] for s in listed["services"]}
    check({"image-gen", "llm-chat", "embeddings", "crasher"} <= names, "list_services", names)
    gpu = (await call(client, "list_services", {"gpu": True})).structured_content
    check({s["name"] for s in gpu["services"]} == {"image-gen", "llm-chat"}, "list_services gpu=true", gpu)
    failed = (await call(client, "list_services", {"status": "failed"})).structured_content
    check([s["name"] for s in failed["services"]] == ["crasher"], "list_services status=failed", failed)
    bad = await call(client, "list_services", {"status": "sleepy"}, error=True)
    check("`status` must be one of" in text_of(bad), "a bad filter is a tool error naming it", text_of(bad))

    started = await call(client, "start_service", {"name": "image-gen"})
    check(started.structured_content["status"] == "running", "image-gen started", started.structured_content)

    holder = await prompt_text(client, "gpu_holder")
    check("held by 'image-gen'" in holder, "the GPU prompt names the holder", holder)
    image = await prompt_text(client, "start_image_generation")
    check("The image generation service is 'image-gen'" in image, "the image prompt finds it by tag", image)
    available = await prompt_text(client, "available_services")
    check(all(n in available for n in ["image-gen", "llm-chat", "embeddings", "crasher"]), "available", available)
    last = await prompt_text(client, "last_service_logs")
    check("is 'image-gen'" in last and "image-gen listening on port" in last, "the last service's logs", last)

    logs = await client.read_resource("service://logs/image-gen")
    text = logs.contents[0].text
    check("image-gen listening on port" in text, "service://logs/image-gen has its real output", text)
    status = json.loads((await client.read_resource("service://status")).contents[0].text)
    check(status["gpu_service_running"] == "image-gen", "service://status names the holder", status)

    conflict = await call(client, "start_service", {"name": "llm-chat"}, error=True)
    check("'image-gen'" in text_of(conflict) and "force=true" in text_of(conflict), "GPU busy names the holder",
          text_of(conflict))
    gpu_status = (await call(client, "gpu_status", {"service": "llm-chat"})).structured_content
    check(gpu_status["start"]["would_stop"] == "image-gen", "gpu_status says what a start would stop", gpu_status)

    unknown = await call(client, "get_service_status", {"name": "no-such-service"}, error=True)
    check("not found" in text_of(unknown) and "image-gen" in text_of(unknown), "unknown service", text_of(unknown))

    diagnosis = await call(client, "diagnose_service", {"name": "crasher"})
    d = diagnosis.structured_content
    check(d["status"] == "failed" and d["last_exit"]["code"] == 3, "diagnosis: failed, exit code 3", d)
    check("CUDA out of memory" in d["summary"] and "code 3" in d["summary"], "diagnosis summary", d["summary"])
    check(any("CUDA out of memory" in l["line"] for l in d["last_log_lines"]), "diagnosis logs", d)
    check(any(e["kind"] == "exited" for e in d["recent_events"]), "diagnosis events", d)

    if mode == "auto":
        # 2026-07-28: a subscription is told when a service changes state.
        async with client.listen(resource_subscriptions=["service://image-gen"]) as sub:
            stopped = await call(client, "stop_service", {"name": "image-gen"})
            event = await asyncio.wait_for(sub.__anext__(), 20)
            check("service://image-gen" in str(event), "subscriber told of the change", event)
    else:
        stopped = await call(client, "stop_service", {"name": "image-gen"})
    check(stopped.structured_content["status"] == "stopped", "image-gen stopped", stopped.structured_content)
    print(f"ok {mode}: {checks} checks (protocol {client.protocol_version})", flush=True)


async def main():
    kind = sys.argv[1]
    if kind == "http":
        url, mode = sys.argv[2], sys.argv[3]
        server = url + "/mcp"
    else:
        nanny, url, mode = sys.argv[2], sys.argv[3], sys.argv[4]
        server = StdioServerParameters(command=nanny, args=["mcp", "--url", url])
    async with Client(server, mode=mode, read_timeout_seconds=60) as client:
        expected = "2026-07-28" if mode == "auto" else "2025-11-25"
        check(client.protocol_version == expected, "negotiated version", client.protocol_version)
        await scenario(client, mode)


asyncio.run(main())
