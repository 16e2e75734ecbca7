"""The public entry of deploy/cloudformation/ecs.yaml: TLS with a certificate, plain HTTP only on explicit opt-in.

moto cannot create the whole of ecs.yaml (its EC2 model fails on a security group whose ingress list holds an
AWS::NoValue, which the conditional rules do), so this deploys the template's load-balancer slice to the private moto
server: its Rules, the Parameters and Conditions those resources use, the LoadBalancer, ApiTargetGroup, HttpListener, HttpsListener and
HideMetricsRule resources and the ApiUrl output, copied verbatim from the template except the load balancer's
SecurityGroups (checked statically in test_artifacts.py). moto then evaluates the Conditions and Fn::If branches as
CloudFormation does, and the listeners are read back with the ELBv2 API.

moto does not evaluate the template's Rules section (test_moto_ignores_rules keeps that true), so the rule that
refuses a stack without a certificate and without AllowPlainHttp=true is checked here by evaluating it against the
same parameter combinations (test_rules_refuse_plain_http_without_opt_in); real AWS evaluates it before it creates
anything.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from typing import Any, Callable

import pytest

from conftest import TEMPLATES, load_cfn

TEMPLATE = TEMPLATES / "ecs.yaml"
SLICE_RESOURCES = ("LoadBalancer", "ApiTargetGroup", "HttpListener", "HttpsListener", "HideMetricsRule")
SLICE_PARAMETERS = ("VpcId", "LoadBalancerSubnetIds", "CertificateArn", "AllowPlainHttp")
SLICE_CONDITIONS = ("HasCertificate", "ServePlainHttp")
SSL_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"


def load_balancer_slice() -> dict[str, Any]:
    template = load_cfn(TEMPLATE)
    resources = copy.deepcopy({name: template["Resources"][name] for name in SLICE_RESOURCES})
    resources["LoadBalancer"]["Properties"].pop("SecurityGroups")
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Parameters": {name: template["Parameters"][name] for name in SLICE_PARAMETERS},
        "Rules": template["Rules"],
        "Conditions": {name: template["Conditions"][name] for name in SLICE_CONDITIONS},
        "Resources": resources,
        "Outputs": {"ApiUrl": template["Outputs"]["ApiUrl"]},
    }


@pytest.fixture(scope="module")
def network(aws: Callable[[str], Any]) -> dict[str, str]:
    ec2 = aws("ec2")
    (vpc,) = [v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"] if v.get("IsDefault")]
    subnets = [s["SubnetId"] for s in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]]
    return {"VpcId": vpc, "LoadBalancerSubnetIds": ",".join(subnets[:2])}


@pytest.fixture(scope="module")
def certificate(aws: Callable[[str], Any]) -> str:
    # moto's ELBv2 refuses a listener certificate ACM does not know.
    return aws("acm").request_certificate(DomainName="api.pedidos.example")["CertificateArn"]


def deploy_slice(aws: Callable[[str], Any], network: dict[str, str], **parameters: str) -> dict[str, Any]:
    """Creates the slice with these parameters; returns its status, outputs and the listeners moto built."""
    cfn, elb = aws("cloudformation"), aws("elbv2")
    name = f"ecs-lb-{uuid.uuid4().hex[:8]}"
    cfn.create_stack(
        StackName=name,
        TemplateBody=json.dumps(load_balancer_slice()),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in {**network, **parameters}.items()],
    )
    deadline = time.monotonic() + 60
    while True:
        stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
        if not stack["StackStatus"].endswith("_IN_PROGRESS"):
            break
        assert time.monotonic() < deadline, f"stack still {stack['StackStatus']} after 60 s"
        time.sleep(0.2)
    physical = {r["LogicalResourceId"]: r["PhysicalResourceId"]
                for r in cfn.describe_stack_resources(StackName=name)["StackResources"] if "LogicalResourceId" in r}  # fmt: skip
    listeners = {}
    for listener in elb.describe_listeners(LoadBalancerArn=physical["LoadBalancer"])["Listeners"]:
        rules = [r for r in elb.describe_rules(ListenerArn=listener["ListenerArn"])["Rules"] if not r["IsDefault"]]
        listeners[listener["Port"]] = {**listener, "Rules": rules}
    return {
        "status": stack["StackStatus"],
        "outputs": {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])},
        "listeners": listeners,
        "target_group": physical["ApiTargetGroup"],
    }


def forwards_to(listener: dict[str, Any]) -> set[str]:
    """Target groups the listener can send a request to (default action and rules)."""
    actions = listener["DefaultActions"] + [a for r in listener["Rules"] for a in r["Actions"]]
    return {a["TargetGroupArn"] for a in actions if a["Type"] == "forward"}


def assert_metrics_hidden(listener: dict[str, Any]) -> None:
    (rule,) = listener["Rules"]
    assert rule["Conditions"][0]["Field"] == "path-pattern"
    assert rule["Actions"][0]["Type"] == "fixed-response" and rule["Actions"][0]["FixedResponseConfig"]["StatusCode"] == "404"


@pytest.mark.parametrize("allow_plain_http", ["false", "true"])
def test_with_a_certificate_https_serves_and_http_redirects(
    aws: Callable[[str], Any], network: dict[str, str], certificate: str, allow_plain_http: str
) -> None:
    """443 terminates TLS 1.2/1.3 with the certificate and forwards; 80 answers 301 to https:// whatever
    AllowPlainHttp says."""
    got = deploy_slice(aws, network, CertificateArn=certificate, AllowPlainHttp=allow_plain_http)
    assert got["status"] == "CREATE_COMPLETE"
    https, http = got["listeners"][443], got["listeners"][80]
    assert set(got["listeners"]) == {80, 443}
    assert https["Protocol"] == "HTTPS" and https["SslPolicy"] == SSL_POLICY
    assert [c["CertificateArn"] for c in https["Certificates"]] == [certificate]
    assert forwards_to(https) == {got["target_group"]}
    assert_metrics_hidden(https)
    assert http["Protocol"] == "HTTP" and forwards_to(http) == set()
    (redirect,) = http["DefaultActions"]
    assert redirect["Type"] == "redirect"
    assert redirect["RedirectConfig"]["Protocol"] == "HTTPS" and redirect["RedirectConfig"]["Port"] == "443"
    assert redirect["RedirectConfig"]["StatusCode"] == "HTTP_301"
    assert got["outputs"]["ApiUrl"].startswith("https://")


def test_plain_http_only_with_the_explicit_opt_in(aws: Callable[[str], Any], network: dict[str, str]) -> None:
    got = deploy_slice(aws, network, AllowPlainHttp="true")
    assert got["status"] == "CREATE_COMPLETE"
    assert set(got["listeners"]) == {80}
    http = got["listeners"][80]
    assert http["Protocol"] == "HTTP" and forwards_to(http) == {got["target_group"]}
    assert_metrics_hidden(http)
    assert got["outputs"]["ApiUrl"].startswith("http://")


def test_moto_ignores_rules(aws: Callable[[str], Any], network: dict[str, str]) -> None:
    """The defaults (no certificate, AllowPlainHttp=false) are what the Rules section refuses in AWS. moto creates the
    stack anyway, which shows the Conditions' fallback: no listener forwards anything, port 80 only answers 403.
    If moto starts refusing the stack, it evaluates Rules: turn this into an assertion that creation fails."""
    got = deploy_slice(aws, network)
    assert got["status"] == "CREATE_COMPLETE", "moto now evaluates Rules: assert the refusal here instead"
    assert set(got["listeners"]) == {80}
    http = got["listeners"][80]
    assert forwards_to(http) == set(), "plain HTTP must never reach the API without AllowPlainHttp=true"
    (action,) = http["DefaultActions"]
    assert action["Type"] == "fixed-response" and action["FixedResponseConfig"]["StatusCode"] == "403"


# ---------------------------------------------------------------- the Rules section, evaluated
def evaluate(node: Any, parameters: dict[str, str]) -> Any:
    """The rule-specific intrinsic functions the template uses: Ref (parameters), Fn::Equals, Fn::Not, Fn::And, Fn::Or."""
    if isinstance(node, dict) and len(node) == 1:
        (fn, arg), = node.items()
        if fn == "Ref":
            return parameters[arg]
        if fn == "Fn::Equals":
            left, right = (evaluate(a, parameters) for a in arg)
            return left == right
        if fn == "Fn::Not":
            return not evaluate(arg[0], parameters)
        if fn == "Fn::And":
            return all(evaluate(a, parameters) for a in arg)
        if fn == "Fn::Or":
            return any(evaluate(a, parameters) for a in arg)
        raise AssertionError(f"teach evaluate() {fn}")
    return node


def rules_pass(parameters: dict[str, str]) -> bool:
    template = load_cfn(TEMPLATE)
    values = {name: p.get("Default", "") for name, p in template["Parameters"].items()} | parameters
    for rule in template["Rules"].values():
        if "RuleCondition" in rule and not evaluate(rule["RuleCondition"], values):
            continue
        if not all(evaluate(a["Assert"], values) for a in rule["Assertions"]):
            return False
    return True


@pytest.mark.parametrize(
    ("parameters", "passes"),
    [
        ({}, False),  # the defaults: no certificate, no opt-in
        ({"AllowPlainHttp": "false"}, False),
        ({"AllowPlainHttp": "true"}, True),
        ({"CertificateArn": "arn:aws:acm:us-east-1:123456789012:certificate/abc"}, True),
        ({"CertificateArn": "arn:aws:acm:us-east-1:123456789012:certificate/abc", "AllowPlainHttp": "true"}, True),
    ],
)
def test_rules_refuse_plain_http_without_opt_in(parameters: dict[str, str], passes: bool) -> None:
    assert rules_pass(parameters) is passes


def test_opt_in_parameter_is_loud_and_off_by_default() -> None:
    params = load_cfn(TEMPLATE)["Parameters"]
    assert params["AllowPlainHttp"]["Default"] == "false"
    assert params["AllowPlainHttp"]["AllowedValues"] == ["false", "true"]
    assert params["AllowPlainHttp"]["Description"].startswith("INSECURE")
    assert params["CertificateArn"]["Default"] == ""
    template = load_cfn(TEMPLATE)
    (rule,) = template["Rules"].values()
    assert "AllowPlainHttp=true" in rule["Assertions"][0]["AssertDescription"]


def test_api_service_waits_for_the_forwarding_listener() -> None:
    """ECS refuses a service whose target group no listener uses yet: the service depends on HideMetricsRule, which
    sits on the listener that forwards (HTTPS with a certificate, HTTP otherwise)."""
    resources = load_cfn(TEMPLATE)["Resources"]
    assert set(resources["ApiService"]["DependsOn"]) == {"HttpListener", "HideMetricsRule"}
    assert resources["HideMetricsRule"]["Properties"]["ListenerArn"] == {
        "Fn::If": ["HasCertificate", {"Ref": "HttpsListener"}, {"Ref": "HttpListener"}]
    }
    assert resources["HttpsListener"]["Condition"] == "HasCertificate"
