#!/usr/bin/env python3
"""Writes the Grafana dashboards in this folder (run after editing the panels).

Every panel's PromQL is evaluated against a real Prometheus by the test suite
(gateway/tests/it/observability.rs), so a panel that names a metric that does
not exist, or that never has data, fails the tests.
"""
import json
import pathlib

HERE = pathlib.Path(__file__).parent
RI = "$__rate_interval"


def panel(pid, title, exprs, unit, x, y, w=12, h=8, legend=None):
    targets = [
        {"refId": chr(ord("A") + i), "expr": e, "legendFormat": (legend or [None] * len(exprs))[i] or "__auto",
         "datasource": {"type": "prometheus", "uid": "${datasource}"}}
        for i, e in enumerate(exprs)
    ]
    return {
        "id": pid, "type": "timeseries", "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": targets,
    }


def dashboard(uid, title, panels, extra_vars=()):
    datasource_var = {
        "name": "datasource", "type": "datasource", "query": "prometheus",
        "label": "Prometheus", "current": {}, "hide": 0,
    }
    return {
        "uid": uid, "title": title, "tags": ["fngate"], "timezone": "browser",
        "schemaVersion": 39, "version": 1, "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [datasource_var, *extra_vars]},
        "panels": panels,
    }


def overview():
    p = []
    p.append(panel(1, "Traffic by network (bytes/s)", [
        f'sum by (network, direction) (rate(fngate_traffic_bytes_total[{RI}]))'], "Bps", 0, 0,
        legend=["{{network}} {{direction}}"]))
    p.append(panel(2, "Invocations/s by outcome", [
        f'sum by (outcome) (rate(fngate_invocations_total[{RI}]))'], "reqps", 12, 0, legend=["{{outcome}}"]))
    p.append(panel(3, "Errors/s by function", [
        f'sum by (function) (rate(fngate_invocations_total{{outcome=~"function_error|gateway_error|start_failed"}}[{RI}]))'],
        "reqps", 0, 8, legend=["{{function}}"]))
    p.append(panel(4, "Latency p50 / p99", [
        f'histogram_quantile(0.5, sum by (le) (rate(fngate_invocation_duration_seconds_bucket[{RI}])))',
        f'histogram_quantile(0.99, sum by (le) (rate(fngate_invocation_duration_seconds_bucket[{RI}])))'],
        "s", 12, 8, legend=["p50", "p99"]))
    p.append(panel(5, "Throttles/s by limit", [
        f'sum by (function, limit) (rate(fngate_throttles_total[{RI}]))'], "reqps", 0, 16,
        legend=["{{function}} {{limit}}"]))
    p.append(panel(6, "Ingress denials/s by reason", [
        f'sum by (function, reason) (rate(fngate_ingress_denials_total[{RI}]))',
        f'sum by (reason) (rate(fngate_proxy_protocol_rejections_total[{RI}]))'], "reqps", 12, 16,
        legend=["{{function}} {{reason}}", "PROXY {{reason}}"]))
    p.append(panel(7, "Instances by state", [
        'sum by (state) (fngate_instances)', 'fngate_instances_live'], "short", 0, 24,
        legend=["{{state}}", "counted against max_instances"]))
    p.append(panel(8, "Cold starts/s and cold-start p99", [
        f'sum(rate(fngate_cold_starts_total[{RI}]))',
        f'histogram_quantile(0.99, sum by (le) (rate(fngate_cold_start_duration_seconds_bucket[{RI}])))'],
        "short", 12, 24, legend=["cold starts/s", "start p99 (s)"]))
    p.append(panel(9, "Instance starts and releases /s", [
        f'sum by (result) (rate(fngate_instance_starts_total[{RI}]))',
        f'sum by (reason) (rate(fngate_instance_releases_total[{RI}]))'], "short", 0, 32,
        legend=["start {{result}}", "release {{reason}}"]))
    p.append(panel(10, "Worker memory", [
        'sum by (kind) (fngate_worker_memory_bytes)',
        'sum(fngate_sandbox_memory_used_bytes)', 'sum(fngate_sandbox_memory_capacity_bytes)'], "bytes", 12, 32,
        legend=["gateway view: {{kind}}", "workers: used", "workers: capacity"]))
    p.append(panel(11, "Connections and TLS handshake failures", [
        'sum(fngate_open_connections)', f'sum(rate(fngate_tls_handshake_failures_total[{RI}]))'],
        "short", 0, 40, legend=["open connections", "handshake failures/s"]))
    p.append(panel(12, "Sandbox instances, process starts and crashes", [
        'sum(fngate_sandbox_instances)',
        f'sum by (result) (rate(fngate_sandbox_process_starts_total[{RI}]))',
        f'sum(rate(fngate_sandbox_instance_crashes_total[{RI}]))'], "short", 12, 40,
        legend=["instances", "process starts {{result}}", "crashes/s"]))
    p.append(panel(13, "Invocations/s by API door", [
        f'sum by (api) (rate(fngate_invocations_total[{RI}]))'], "reqps", 0, 48, legend=["{{api}}"]))
    p.append(panel(14, "Credential refusals/s by door and reason", [
        f'sum by (api, reason) (rate(fngate_auth_failures_total[{RI}]))'], "reqps", 12, 48,
        legend=["{{api}} {{reason}}"]))
    # Asynchronous invocations (the durable queue).
    p.append(panel(15, "Async queue: tasks not done, oldest task age", [
        'sum(fngate_async_queued)', 'max(fngate_async_oldest_task_age_seconds)'], "short", 0, 56,
        legend=["tasks not done", "oldest age (s)"]))
    p.append(panel(16, "Async enqueue commit and dispatch delay p99", [
        f'histogram_quantile(0.99, sum by (le) (rate(fngate_async_enqueue_seconds_bucket[{RI}])))',
        f'histogram_quantile(0.99, sum by (le) (rate(fngate_async_dispatch_delay_seconds_bucket[{RI}])))'],
        "s", 12, 56, legend=["enqueue (202 after commit)", "due → started"]))
    p.append(panel(17, "Async results and retries /s", [
        f'sum by (result) (rate(fngate_async_results_total[{RI}]))',
        f'sum by (reason) (rate(fngate_async_retries_total[{RI}]))'], "reqps", 0, 64,
        legend=["{{result}}", "retry: {{reason}}"]))
    p.append(panel(18, "Destination records: deliveries /s and pending", [
        f'sum by (result) (rate(fngate_async_destination_deliveries_total[{RI}]))',
        'sum(fngate_async_destination_pending)'], "short", 12, 64,
        legend=["{{result}}", "pending"]))
    # Cloud backends (functions that run in Lambda, FC, Azure or behind a URL).
    p.append(panel(19, "Backend attempts/s by outcome, ejections", [
        f'sum by (function, backend, outcome) (rate(fngate_backend_requests_total[{RI}]))',
        'sum by (function, backend) (fngate_backend_ejected)',
        f'sum by (function, backend) (increase(fngate_backend_ejections_total[{RI}]))'], "short", 0, 72,
        legend=["{{function}}/{{backend}} {{outcome}}", "{{function}}/{{backend}} ejected", "{{function}}/{{backend}} ejections"]))
    p.append(panel(20, "Backend latency p99, backend traffic by network", [
        f'histogram_quantile(0.99, sum by (le, backend) (rate(fngate_backend_request_duration_seconds_bucket[{RI}])))',
        f'sum by (network, direction) (rate(fngate_backend_traffic_bytes_total[{RI}]))'], "short", 12, 72,
        legend=["{{backend}} p99 (s)", "{{network}} {{direction}} (bytes/s)"]))
    # What isolated instances send out and receive, by destination network
    # (the workers' live counters; the gateway's, added at each release).
    p.append(panel(21, "Instance egress by function and network (bytes/s, workers)", [
        f'sum by (function, network, direction) (rate(fngate_egress_bytes_total[{RI}]))'], "Bps", 0, 80,
        legend=["{{function}} {{network}} {{direction}}"]))
    p.append(panel(22, "Egress of released instances by network (bytes, gateway)", [
        f'sum by (network, direction) (increase(fngate_instance_egress_bytes_total[{RI}]))'], "bytes", 12, 80,
        legend=["{{network}} {{direction}}"]))
    # Reloads (issue 30): how they went, and how old the running files are.
    p.append(panel(23, "Configuration reloads /s by result, age of the loaded configuration", [
        f'sum by (result) (rate(fngate_config_reloads_total[{RI}]))',
        'time() - max(fngate_config_loaded_timestamp_seconds)'], "short", 0, 88,
        legend=["{{result}} /s", "loaded (s ago)"]))
    return dashboard("fngate-overview", "fngate overview", p)


def function_drilldown():
    f = 'function="$function"'
    var = {
        "name": "function", "type": "query", "label": "Function",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": 'label_values(fngate_invocations_total{function!="(unknown)"}, function)', "refId": "fn"},
        "definition": 'label_values(fngate_invocations_total{function!="(unknown)"}, function)',
        "refresh": 2, "current": {}, "hide": 0,
    }
    p = []
    p.append(panel(1, "Invocations/s by network and outcome", [
        f'sum by (network, outcome) (rate(fngate_invocations_total{{{f}}}[{RI}]))'], "reqps", 0, 0,
        legend=["{{network}} {{outcome}}"]))
    p.append(panel(2, "Traffic by network (bytes/s)", [
        f'sum by (network, direction) (rate(fngate_traffic_bytes_total{{{f}}}[{RI}]))'], "Bps", 12, 0,
        legend=["{{network}} {{direction}}"]))
    p.append(panel(3, "Latency p50 / p99", [
        f'histogram_quantile(0.5, sum by (le) (rate(fngate_invocation_duration_seconds_bucket{{{f}}}[{RI}])))',
        f'histogram_quantile(0.99, sum by (le) (rate(fngate_invocation_duration_seconds_bucket{{{f}}}[{RI}])))'],
        "s", 0, 8, legend=["p50", "p99"]))
    p.append(panel(4, "In flight and instances", [
        f'sum(fngate_invocations_in_flight{{{f}}})', f'sum by (state) (fngate_instances{{{f}}})'], "short", 12, 8,
        legend=["in flight", "instances {{state}}"]))
    p.append(panel(5, "Throttles and denials /s", [
        f'sum by (limit) (rate(fngate_throttles_total{{{f}}}[{RI}]))',
        f'sum by (reason) (rate(fngate_ingress_denials_total{{{f}}}[{RI}]))'], "reqps", 0, 16,
        legend=["throttled: {{limit}}", "denied: {{reason}}"]))
    p.append(panel(6, "Cold starts", [
        f'sum(rate(fngate_cold_starts_total{{{f}}}[{RI}]))',
        f'histogram_quantile(0.99, sum by (le) (rate(fngate_cold_start_duration_seconds_bucket{{{f}}}[{RI}])))'],
        "short", 12, 16, legend=["cold starts/s", "start p99 (s)"]))
    p.append(panel(7, "Instance starts and releases /s", [
        f'sum by (result) (rate(fngate_instance_starts_total{{{f}}}[{RI}]))',
        f'sum by (reason) (rate(fngate_instance_releases_total{{{f}}}[{RI}]))'], "short", 0, 24,
        legend=["start {{result}}", "release {{reason}}"]))
    p.append(panel(8, "Invocations/s by API door and outcome", [
        f'sum by (api, outcome) (rate(fngate_invocations_total{{{f}}}[{RI}]))'], "reqps", 12, 24,
        legend=["{{api}} {{outcome}}"]))
    p.append(panel(9, "Async results and retries /s", [
        f'sum by (result) (rate(fngate_async_results_total{{{f}}}[{RI}]))',
        f'sum by (reason) (rate(fngate_async_retries_total{{{f}}}[{RI}]))'], "reqps", 0, 32,
        legend=["{{result}}", "retry: {{reason}}"]))
    return dashboard("fngate-function", "fngate function", p, extra_vars=[var])


def fleet():
    """Fleet mode ([fleet]): membership, the engines, shared limits and leases."""
    p = []
    p.append(panel(1, "Live gateways and the limit share", [
        'max(fngate_fleet_live_gateways)', 'max(fngate_fleet_limit_share)'], "short", 0, 0,
        legend=["live gateways", "limits divided by"]))
    p.append(panel(2, "Heartbeat age by gateway", [
        'max by (instance) (fngate_fleet_heartbeat_age_seconds)'], "s", 12, 0, legend=["{{instance}}"]))
    p.append(panel(3, "Engine round trips p99 (NATS heartbeat, Redis rate check)", [
        f'histogram_quantile(0.99, sum by (le) (rate(fngate_fleet_engine_rtt_seconds_bucket[{RI}])))',
        f'histogram_quantile(0.99, sum by (le) (rate(fngate_fleet_redis_rtt_seconds_bucket[{RI}])))'],
        "s", 0, 8, legend=["NATS", "Redis"]))
    p.append(panel(4, "Rate checks answered without Redis /s", [
        f'sum by (reason) (rate(fngate_fleet_limit_fallbacks_total[{RI}]))',
        f'sum(rate(fngate_fleet_limit_cached_denials_total[{RI}]))'], "reqps", 12, 8,
        legend=["fallback to split: {{reason}}", "cached denial"]))
    p.append(panel(5, "Throttled calls /s by limit (all gateways)", [
        f'sum by (limit) (rate(fngate_throttles_total[{RI}]))'], "reqps", 0, 16, legend=["{{limit}}"]))
    p.append(panel(6, "Workers per gateway, instances released by expired leases", [
        'max by (instance) (fngate_fleet_workers)',
        f'sum(increase(fngate_sandbox_lease_releases_total[{RI}]))'], "short", 12, 16,
        legend=["{{instance}} workers", "lease releases"]))
    # A rollout is done when every gateway runs one configuration (hash).
    p.append(panel(7, "Configuration versions running, gateways per version", [
        'count(count by (hash) (fngate_config_info))',
        'count by (hash) (fngate_config_info)'], "short", 0, 24,
        legend=["versions", "{{hash}}"]))
    return dashboard("fngate-fleet", "fngate fleet", p)


if __name__ == "__main__":
    for name, d in [("fngate-overview.json", overview()), ("fngate-function.json", function_drilldown()),
                    ("fngate-fleet.json", fleet())]:
        (HERE / name).write_text(json.dumps(d, indent=2) + "\n")
        print("wrote", name)
