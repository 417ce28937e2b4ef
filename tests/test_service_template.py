"""ecs/service.yaml: cfn-lint clean, its task definition and task role agree with
ecs/task-definition.json and ecs/task-role-policy.json, and the service, log group and
auto scaling fit together so that scale-in really happens."""

from __future__ import annotations

import ast
import copy
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
from cfnlint.decode import decode
from moto import mock_aws

from tests.aws import REGION, use_fake_credentials

ROOT = Path(__file__).parent.parent
TEMPLATE_PATH = ROOT / "ecs" / "service.yaml"
TASK_DEFINITION_JSON = json.loads((ROOT / "ecs" / "task-definition.json").read_text())
TASK_ROLE_POLICY_JSON = json.loads((ROOT / "ecs" / "task-role-policy.json").read_text())
GUIDE = (ROOT / "docs" / "cloudformation.md").read_text()

# What the template adds to the app container on purpose: where its jobs come from.
TEMPLATE_ONLY_APP_ENVIRONMENT = "QUEUE_URL"
# Maps whose keys are data, not property names, so they keep their spelling.
FREE_FORM_MAPS = frozenset({"Options", "DockerLabels", "SecretOptions"})
QUEUE_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/jobs"
QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:jobs"


def load_template() -> dict[str, Any]:
    """The template as cfn-lint reads it: short forms (!Ref, !Sub ...) become long ones."""
    template, errors = decode(str(TEMPLATE_PATH))
    assert not errors, errors
    assert template is not None
    return template


TEMPLATE = load_template()
RESOURCES = TEMPLATE["Resources"]
PARAMETERS = TEMPLATE["Parameters"]


def resolve(node: Any, refs: dict[str, Any], conditions: dict[str, bool] | None = None) -> Any:
    """Replace Ref, Fn::Sub, Fn::GetAtt and Fn::If with the given values.

    `refs` is keyed by what the template names (`AppImage`, `AWS::Region`,
    `TaskRole.Arn`); a name without a value raises, so a new reference cannot slip
    through the comparison unmapped.
    """
    conditions = conditions or {}
    if isinstance(node, dict):
        if len(node) == 1:
            ((key, argument),) = node.items()
            if key == "Ref":
                return lookup(refs, argument)
            if key == "Fn::GetAtt":
                name = argument if isinstance(argument, str) else ".".join(argument)
                return lookup(refs, name)
            if key == "Fn::Sub":
                assert isinstance(argument, str), "only the one-argument Fn::Sub is mapped"
                return re.sub(r"\$\{([^}]+)\}", lambda m: str(lookup(refs, m[1])), argument)
            if key == "Fn::If":
                condition, when_true, when_false = argument
                chosen = when_true if lookup(conditions, condition) else when_false
                return resolve(chosen, refs, conditions)
            assert not key.startswith("Fn::"), f"{key} is not mapped by this test"
        return {str(k): resolve(v, refs, conditions) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(item, refs, conditions) for item in node]
    if isinstance(node, str):
        return str(node)  # cfn-lint's str subclass, as a plain str for readable diffs
    return node


def lookup(values: dict[str, Any], name: str) -> Any:
    if name not in values:
        pytest.fail(f"the template refers to {name!r}, which this test does not map")
    return values[name]


def api_spelling(node: Any, *, free_form: bool = False) -> Any:
    """CloudFormation's `ContainerDefinitions` as the ECS API's `containerDefinitions`."""
    if isinstance(node, dict):
        return {
            (key if free_form else key[0].lower() + key[1:]): api_spelling(
                value, free_form=key in FREE_FORM_MAPS
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [api_spelling(item) for item in node]
    return node


def refs_from_task_definition_json(task_definition: dict[str, Any]) -> dict[str, Any]:
    """Each parameterised value of the template, taken from the JSON it stands for."""
    containers = {c["name"]: c for c in task_definition["containerDefinitions"]}
    options = containers["app"]["logConfiguration"]["options"]
    return {
        "AWS::StackName": task_definition["family"],
        "AWS::Region": options["awslogs-region"],
        "AppImage": containers["app"]["image"],
        "SidecarImage": containers["protection"]["image"],
        "LogGroup": options["awslogs-group"],
        "TaskRole.Arn": task_definition["taskRoleArn"],
        "ExecutionRole.Arn": task_definition["executionRoleArn"],
        "Queue": QUEUE_URL,
    }


def by_name(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Order is not meaning for containers and environment variables."""
    return sorted(items, key=lambda item: item["name"])


def normalised(task_definition: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(task_definition)
    result["containerDefinitions"] = by_name(result["containerDefinitions"])
    for container in result["containerDefinitions"]:
        if "environment" in container:
            container["environment"] = by_name(container["environment"])
    return result


def template_task_definition(template: dict[str, Any], refs: dict[str, Any]) -> dict[str, Any]:
    """The template's task definition with the JSON's values, in the API's spelling,
    without what only the template has (checked by its own tests)."""
    properties = template["Resources"]["TaskDefinition"]["Properties"]
    resolved = api_spelling(resolve(properties, refs, {"CreateQueue": True}))
    for container in resolved["containerDefinitions"]:
        if container["name"] == "app":
            container["environment"] = [
                e for e in container["environment"] if e["name"] != TEMPLATE_ONLY_APP_ENVIRONMENT
            ]
    return normalised(resolved)


def json_task_definition(task_definition: dict[str, Any]) -> dict[str, Any]:
    """The JSON without what the template does differently on purpose: the stack
    creates the log group, so the containers must not (the execution role could not)."""
    expected = copy.deepcopy(task_definition)
    for container in expected["containerDefinitions"]:
        container["logConfiguration"]["options"].pop("awslogs-create-group", None)
    return normalised(expected)


def compared(
    template: dict[str, Any], task_definition: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    refs = refs_from_task_definition_json(task_definition)
    return template_task_definition(template, refs), json_task_definition(task_definition)


def resource_of_type(kind: str) -> tuple[str, dict[str, Any]]:
    found = [(name, r) for name, r in RESOURCES.items() if r["Type"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {[name for name, _ in found]}"
    return found[0]


# ---- cfn-lint ------------------------------------------------------------------------


def cfn_lint(path: Path) -> subprocess.CompletedProcess[str]:
    """The venv's cfn-lint with its bundled specs (no network), in several partitions."""
    command = [str(Path(sys.executable).parent / "cfn-lint"), "--regions"]
    command += ["us-east-1", "eu-central-1", "cn-north-1", "us-gov-west-1", "--", str(path)]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)


def test_cfn_lint_is_clean():
    result = cfn_lint(TEMPLATE_PATH)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_cfn_lint_really_reads_the_template(tmp_path):
    """The clean run above means something: the same file with one bad value fails."""
    broken = tmp_path / "service.yaml"
    text = TEMPLATE_PATH.read_text()
    assert text.count("LaunchType: FARGATE\n") == 1
    broken.write_text(text.replace("LaunchType: FARGATE\n", "LaunchType: FARGATEE\n"))
    result = cfn_lint(broken)
    assert result.returncode != 0
    assert "FARGATEE" in result.stdout


# ---- the task definition agrees with ecs/task-definition.json ------------------------


def test_task_definition_agrees_with_the_json():
    """Every field of ecs/task-definition.json, containers included, once the template's
    parameters take the JSON's values (images, roles, family, log group, Region)."""
    from_template, from_json = compared(TEMPLATE, TASK_DEFINITION_JSON)
    assert [c["name"] for c in from_template["containerDefinitions"]] == ["app", "protection"]
    top_level = {k: v for k, v in from_template.items() if k != "containerDefinitions"}
    assert top_level == {k: v for k, v in from_json.items() if k != "containerDefinitions"}
    for ours, theirs in zip(
        from_template["containerDefinitions"], from_json["containerDefinitions"], strict=True
    ):
        assert ours == theirs, f"container {theirs['name']!r} differs"


def add_app_environment(td: dict[str, Any]) -> None:
    app = next(c for c in td["containerDefinitions"] if c["name"] == "app")
    app["environment"].append({"name": "TASK_PROTECTION_HOLD_TIMEOUT_SECONDS", "value": "100"})


def change_sidecar_stop_timeout(td: dict[str, Any]) -> None:
    td["containerDefinitions"][1]["stopTimeout"] = 60


def change_health_check(td: dict[str, Any]) -> None:
    td["containerDefinitions"][1]["healthCheck"]["retries"] = 5


def add_read_only_root(td: dict[str, Any]) -> None:
    td["containerDefinitions"][0]["readonlyRootFilesystem"] = True


def add_linux_parameters(td: dict[str, Any]) -> None:
    td["containerDefinitions"][0]["linuxParameters"] = {"initProcessEnabled": True}


def add_port_mapping(td: dict[str, Any]) -> None:
    td["containerDefinitions"][1]["portMappings"] = [{"containerPort": 31680}]


def drop_depends_on(td: dict[str, Any]) -> None:
    del td["containerDefinitions"][0]["dependsOn"]


def change_restart_policy(td: dict[str, Any]) -> None:
    td["containerDefinitions"][1]["restartPolicy"]["restartAttemptPeriod"] = 300


def change_task_memory(td: dict[str, Any]) -> None:
    td["memory"] = "2048"


def change_essential(td: dict[str, Any]) -> None:
    td["containerDefinitions"][1]["essential"] = True


def change_sidecar_environment_value(td: dict[str, Any]) -> None:
    env = td["containerDefinitions"][1]["environment"]
    next(e for e in env if e["name"] == "TASK_PROTECTION_IDLE_GRACE_SECONDS")["value"] = "30"


@pytest.mark.parametrize(
    "drift",
    [
        add_app_environment,
        change_sidecar_stop_timeout,
        change_health_check,
        add_read_only_root,
        add_linux_parameters,
        add_port_mapping,
        drop_depends_on,
        change_restart_policy,
        change_task_memory,
        change_essential,
        change_sidecar_environment_value,
    ],
)
def test_the_comparison_catches_drift_in_the_json(drift):
    """A change to ecs/task-definition.json that the template lacks is caught."""
    drifted = copy.deepcopy(TASK_DEFINITION_JSON)
    drift(drifted)
    from_template, from_json = compared(TEMPLATE, drifted)
    assert from_template != from_json


def test_the_comparison_catches_drift_in_the_template():
    template = copy.deepcopy(TEMPLATE)
    sidecar = template["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"][1]
    sidecar["HealthCheck"]["Interval"] = 30
    from_template, from_json = compared(template, TASK_DEFINITION_JSON)
    assert from_template != from_json


def test_the_comparison_fails_on_an_unmapped_reference():
    """A new parameter in the task definition must be mapped, not silently compared."""
    template = copy.deepcopy(TEMPLATE)
    properties = template["Resources"]["TaskDefinition"]["Properties"]
    properties["ContainerDefinitions"][0]["User"] = {"Ref": "AppUser"}
    with pytest.raises(pytest.fail.Exception, match="AppUser"):
        compared(template, TASK_DEFINITION_JSON)


def test_parameterised_values_come_from_parameters_and_resources():
    """What the comparison maps really is a parameter or resource of the template."""
    properties = RESOURCES["TaskDefinition"]["Properties"]
    app, sidecar = properties["ContainerDefinitions"]
    assert app["Image"] == {"Ref": "AppImage"}
    assert sidecar["Image"] == {"Ref": "SidecarImage"}
    assert properties["TaskRoleArn"] == {"Fn::GetAtt": ["TaskRole", "Arn"]}
    assert properties["ExecutionRoleArn"] == {"Fn::GetAtt": ["ExecutionRole", "Arn"]}
    assert {"AppImage", "SidecarImage"} <= PARAMETERS.keys()
    assert {"TaskRole", "ExecutionRole", "LogGroup"} <= RESOURCES.keys()


# ---- the app's queue -----------------------------------------------------------------

BOTH_QUEUE_BRANCHES = pytest.mark.parametrize(
    ("create_queue", "refs"),
    [
        (True, {"Queue": QUEUE_URL, "Queue.Arn": QUEUE_ARN, "Queue.QueueName": "jobs"}),
        (False, {"QueueName": "jobs"}),
    ],
    ids=["queue-created", "queue-passed-in"],
)
AWS_REFS = {
    "AWS::Partition": "aws",
    "AWS::Region": "us-east-1",
    "AWS::AccountId": "123456789012",
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::StackName": "queue-worker",
    "ClusterName": "workers",
    "Service.Name": "queue-worker-Service-abc",
}


@BOTH_QUEUE_BRANCHES
def test_app_gets_the_queue_url_either_way(create_queue, refs):
    """A created queue's Ref is its URL; a passed-in name is built into the same URL."""
    app = RESOURCES["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    environment = resolve(app["Environment"], AWS_REFS | refs, {"CreateQueue": create_queue})
    values = {e["Name"]: e["Value"] for e in environment}
    assert values[TEMPLATE_ONLY_APP_ENVIRONMENT] == QUEUE_URL
    output = resolve(
        TEMPLATE["Outputs"]["QueueUrl"], AWS_REFS | refs, {"CreateQueue": create_queue}
    )
    assert output["Value"] == QUEUE_URL


def test_queue_is_created_only_without_a_queue_name():
    assert PARAMETERS["QueueName"]["Default"] == ""
    assert TEMPLATE["Conditions"]["CreateQueue"] == {"Fn::Equals": [{"Ref": "QueueName"}, ""]}
    assert RESOURCES["Queue"]["Condition"] == "CreateQueue"


# ---- IAM -----------------------------------------------------------------------------


def policies_of(role: str) -> dict[str, dict[str, Any]]:
    return {p["PolicyName"]: p["PolicyDocument"] for p in RESOURCES[role]["Properties"]["Policies"]}


def refs_from_task_role_policy_json() -> dict[str, str]:
    (statement,) = TASK_ROLE_POLICY_JSON["Statement"]
    found = re.fullmatch(
        r"arn:(?P<partition>[^:]+):ecs:(?P<region>[^:]+):(?P<account>\d+):task/(?P<cluster>[^/]+)/\*",
        statement["Resource"],
    )
    assert found, statement["Resource"]
    return {
        "AWS::Partition": found["partition"],
        "AWS::Region": found["region"],
        "AWS::AccountId": found["account"],
        "ClusterName": found["cluster"],
    }


def test_protection_policy_is_ecs_task_role_policy_json():
    """The same document, statement for statement, once the cluster, Region and
    account are the JSON's: exactly the two protection actions on the cluster's tasks."""
    document = policies_of("TaskRole")["scale-in-protection"]
    assert resolve(document, refs_from_task_role_policy_json()) == TASK_ROLE_POLICY_JSON
    (statement,) = document["Statement"]
    assert sorted(statement["Action"]) == ["ecs:GetTaskProtection", "ecs:UpdateTaskProtection"]


def all_statements() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for name, resource in RESOURCES.items():
        if resource["Type"] == "AWS::IAM::Role":
            for policy in resource["Properties"].get("Policies", []):
                found += [(name, s) for s in policy["PolicyDocument"]["Statement"]]
    return found


def actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def test_no_other_statement_grants_ecs_or_wildcards():
    ecs_actions = sorted(
        a for _, s in all_statements() for a in actions(s) if a.lower().startswith("ecs:")
    )
    assert ecs_actions == ["ecs:GetTaskProtection", "ecs:UpdateTaskProtection"]
    for role, statement in all_statements():
        assert statement["Effect"] == "Allow"
        assert statement["Resource"] != "*", role
        assert not any("*" in a for a in actions(statement)), role


@BOTH_QUEUE_BRANCHES
def test_app_may_consume_its_queue_and_only_it(create_queue, refs):
    statement = policies_of("TaskRole")["job-queue"]["Statement"][0]
    assert sorted(actions(statement)) == [
        "sqs:ChangeMessageVisibility",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
        "sqs:GetQueueUrl",
        "sqs:ReceiveMessage",
    ]
    resource = resolve(statement["Resource"], AWS_REFS | refs, {"CreateQueue": create_queue})
    assert resource == QUEUE_ARN


def test_execution_role_only_pulls_images_and_writes_logs():
    properties = RESOURCES["ExecutionRole"]["Properties"]
    assert "Policies" not in properties
    (managed,) = properties["ManagedPolicyArns"]
    assert resolve(managed, AWS_REFS) == (
        "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
    )


def trust_of(role: str) -> dict[str, Any]:
    (statement,) = RESOURCES[role]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
    assert statement["Action"] == "sts:AssumeRole"
    return dict(statement)


def test_task_role_trusts_only_ecs_tasks_of_this_account():
    condition = resolve(trust_of("TaskRole")["Condition"], AWS_REFS)
    assert condition == {
        "ArnLike": {"aws:SourceArn": "arn:aws:ecs:us-east-1:123456789012:*"},
        "StringEquals": {"aws:SourceAccount": "123456789012"},
    }


def test_execution_role_trusts_ecs_tasks():
    assert "Condition" not in trust_of("ExecutionRole")  # the trust ECS documents for it


def test_capability_iam_is_enough():
    """Named IAM resources would need CAPABILITY_NAMED_IAM, which the README does not pass."""
    for resource in RESOURCES.values():
        if resource["Type"].startswith("AWS::IAM::"):
            assert "RoleName" not in resource["Properties"]
            assert "ManagedPolicyName" not in resource["Properties"]


# ---- the service, the log group --------------------------------------------------------


def test_service_runs_the_task_definition_on_fargate():
    _, service = resource_of_type("AWS::ECS::Service")
    properties = service["Properties"]
    assert properties["TaskDefinition"] == {"Ref": "TaskDefinition"}
    assert properties["Cluster"] == {"Ref": "ClusterName"}
    assert properties["LaunchType"] == "FARGATE"
    network = properties["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network["Subnets"] == {"Ref": "Subnets"}
    assert network["SecurityGroups"] == {"Ref": "SecurityGroups"}
    assert PARAMETERS["Subnets"]["Type"] == "List<AWS::EC2::Subnet::Id>"
    assert PARAMETERS["SecurityGroups"]["Type"] == "List<AWS::EC2::SecurityGroup::Id>"


def test_stack_updates_leave_the_task_count_to_auto_scaling():
    _, service = resource_of_type("AWS::ECS::Service")
    assert "DesiredCount" not in service["Properties"]


def test_log_group_is_used_by_both_containers():
    containers = RESOURCES["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    assert len(containers) == 2
    for container in containers:
        logging = container["LogConfiguration"]
        assert logging["LogDriver"] == "awslogs"
        assert logging["Options"]["awslogs-group"] == {"Ref": "LogGroup"}
        assert logging["Options"]["awslogs-region"] == {"Ref": "AWS::Region"}
        assert "awslogs-create-group" not in logging["Options"]
    assert RESOURCES["LogGroup"]["Type"] == "AWS::Logs::LogGroup"
    assert RESOURCES["LogGroup"]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


# ---- auto scaling ----------------------------------------------------------------------


def scaling() -> tuple[dict[str, Any], dict[str, Any]]:
    target_name, target = resource_of_type("AWS::ApplicationAutoScaling::ScalableTarget")
    _, policy = resource_of_type("AWS::ApplicationAutoScaling::ScalingPolicy")
    assert policy["Properties"]["ScalingTargetId"] == {"Ref": target_name}
    return target["Properties"], policy["Properties"]


def test_scalable_target_is_the_service_desired_count():
    target, _ = scaling()
    assert target["ServiceNamespace"] == "ecs"
    assert target["ScalableDimension"] == "ecs:service:DesiredCount"
    assert resolve(target["ResourceId"], AWS_REFS) == "service/workers/queue-worker-Service-abc"
    assert resolve(target["RoleARN"], AWS_REFS) == (
        "arn:aws:iam::123456789012:role/aws-service-role/ecs.application-autoscaling.amazonaws.com"
        "/AWSServiceRoleForApplicationAutoScaling_ECSService"
    )
    assert target["MinCapacity"] == {"Ref": "MinCapacity"}
    assert target["MaxCapacity"] == {"Ref": "MaxCapacity"}


def test_capacity_parameters_are_sensible():
    """At least one task: backlog per task is undefined with none, so target tracking
    could never scale out from zero."""
    assert PARAMETERS["MinCapacity"]["MinValue"] >= 1
    assert 1 <= PARAMETERS["MinCapacity"]["Default"] <= PARAMETERS["MaxCapacity"]["Default"]
    assert PARAMETERS["BacklogPerTask"]["MinValue"] > 0


def test_scale_in_is_on():
    _, policy = scaling()
    assert policy["PolicyType"] == "TargetTrackingScaling"
    configuration = policy["TargetTrackingScalingPolicyConfiguration"]
    assert configuration.get("DisableScaleIn", False) is False
    assert configuration["TargetValue"] == {"Ref": "BacklogPerTask"}
    assert 0 < configuration["ScaleInCooldown"] <= 600


@BOTH_QUEUE_BRANCHES
def test_metric_is_visible_messages_per_running_task(create_queue, refs):
    _, policy = scaling()
    specification = policy["TargetTrackingScalingPolicyConfiguration"]
    metrics = resolve(
        specification["CustomizedMetricSpecification"]["Metrics"],
        AWS_REFS | refs,
        {"CreateQueue": create_queue},
    )
    by_id = {m["Id"]: m for m in metrics}
    (returned,) = [m for m in metrics if m["ReturnData"]]
    numerator, denominator = re.fullmatch(r"(\w+) / (\w+)", returned["Expression"]).groups()

    def metric(query_id: str) -> tuple[str, str, dict[str, str]]:
        stat = by_id[query_id]["MetricStat"]
        found = stat["Metric"]
        dimensions = {d["Name"]: d["Value"] for d in found["Dimensions"]}
        return found["Namespace"], found["MetricName"], dimensions

    assert metric(numerator) == (
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        {"QueueName": "jobs"},
    )
    assert metric(denominator) == (
        "ECS/ContainerInsights",
        "RunningTaskCount",
        {"ClusterName": "workers", "ServiceName": "queue-worker-Service-abc"},
    )
    assert len(metrics) == 3


# ---- the guide's deploy command -------------------------------------------------------


def readme_deploy_command() -> list[str]:
    found = re.search(r"^aws cloudformation deploy .*?(?<!\\)$", GUIDE, re.MULTILINE | re.DOTALL)
    assert found, "no `aws cloudformation deploy` command in docs/cloudformation.md"
    return shlex.split(found[0].replace("\\\n", " "))


def readme_parameter_overrides() -> dict[str, str]:
    words = readme_deploy_command()
    start = words.index("--parameter-overrides") + 1
    overrides = {}
    for word in words[start:]:
        if word.startswith("--"):
            break
        name, value = word.split("=", 1)
        overrides[name] = value
    return overrides


def test_readme_deploy_command_fits_the_template():
    """The one command of the guide passes every parameter without a default, only
    parameters that exist, and the capability the IAM roles need."""
    words = readme_deploy_command()
    assert words[words.index("--template-file") + 1] == "ecs/service.yaml"
    assert words[words.index("--capabilities") + 1] == "CAPABILITY_IAM"
    required = {name for name, p in PARAMETERS.items() if "Default" not in p}
    assert required <= readme_parameter_overrides().keys() <= PARAMETERS.keys()


# ---- the guide's parameters, deployed in moto -----------------------------------------


@pytest.mark.filterwarnings("ignore:Tried to parse AWS")  # its scaling resources
@pytest.mark.parametrize("queue_name", ["", "jobs"], ids=["queue-created", "queue-passed-in"])
def test_the_readme_parameters_deploy_and_the_pieces_are_wired(queue_name):
    """moto's CloudFormation evaluates the template on its own (it has no Application
    Auto Scaling resources): the stack creates, and what one resource names, another is."""
    use_fake_credentials()
    parameters = readme_parameter_overrides() | ({"QueueName": queue_name} if queue_name else {})
    with mock_aws():
        client = {name: boto3.client(name, region_name=REGION) for name in ("ecs", "sqs", "iam")}
        client["ecs"].create_cluster(clusterName=parameters["ClusterName"])
        if queue_name:
            client["sqs"].create_queue(QueueName=queue_name)
        stacks = boto3.client("cloudformation", region_name=REGION)
        stacks.create_stack(
            StackName="queue-worker",
            TemplateBody=TEMPLATE_PATH.read_text(),
            Capabilities=["CAPABILITY_IAM"],
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        )
        (stack,) = stacks.describe_stacks(StackName="queue-worker")["Stacks"]
        assert stack["StackStatus"] == "CREATE_COMPLETE"
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
        physical = {
            r["LogicalResourceId"]: r["PhysicalResourceId"]
            for r in stacks.list_stack_resources(StackName="queue-worker")["StackResourceSummaries"]
        }
        assert ("Queue" in physical) is not bool(queue_name)

        queue_url = outputs["QueueUrl"]
        queue_arn = client["sqs"].get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]
        (service,) = client["ecs"].describe_services(
            cluster=parameters["ClusterName"], services=[outputs["ServiceName"]]
        )["services"]
        assert service["taskDefinition"] == physical["TaskDefinition"]
        task_definition = client["ecs"].describe_task_definition(
            taskDefinition=service["taskDefinition"]
        )["taskDefinition"]
        images = {c["name"]: c["image"] for c in task_definition["containerDefinitions"]}
        assert images == {"app": parameters["AppImage"], "protection": parameters["SidecarImage"]}
        for container in task_definition["containerDefinitions"]:
            group = container["logConfiguration"]["options"]["awslogs-group"]
            assert group == outputs["LogGroupName"] == "/ecs/queue-worker"
        app = next(c for c in task_definition["containerDefinitions"] if c["name"] == "app")
        assert {"name": "QUEUE_URL", "value": queue_url} in app["environment"]

        def resource_of(policy_name: str) -> str:
            role = outputs["TaskRoleArn"].rsplit("/", 1)[1]
            answer = client["iam"].get_role_policy(RoleName=role, PolicyName=policy_name)
            document = answer["PolicyDocument"]
            if isinstance(document, str):  # moto's CloudFormation stores the dict's repr
                document = ast.literal_eval(document)
            return str(document["Statement"][0]["Resource"])

        assert resource_of("job-queue") == queue_arn
        assert resource_of("scale-in-protection") == (
            f"arn:aws:ecs:{REGION}:123456789012:task/{parameters['ClusterName']}/*"
        )
