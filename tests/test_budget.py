"""The budget guard (workshop/budget.py): the price table, the Price List API, Service Quotas, and
refusals before any Create* call.

Moto has no Price List API and no ListServiceQuotas (moto 5.2.5 answers 500), so those answers come
from botocore's Stubber, which checks every request and reply against the real service model;
SageMaker itself is a moto_server, and every request the SDK sends is captured by an event hook.
"""

import ast
import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import boto3
import nbformat
import pytest
from aws_fixtures import *  # noqa: F401,F403 - moto_server, sdk_offline, probe_estimator
from botocore.stub import Stubber

from workshop import PHASE0_DIR, budget, jobs, run_notebooks

REGION = "us-east-1"
BUCKET = "workshop-budget-test"
ROLE = "arn:aws:iam::123456789012:role/SageMakerWorkshopRole"
ROOT = PHASE0_DIR.parents[1]


@pytest.fixture(autouse=True)
def fresh_clients():
    budget.forget_clients()
    yield
    budget.forget_clients()


def offline_session():
    """A boto3 session that can only reach what a Stubber answers."""
    return boto3.Session(region_name=REGION, aws_access_key_id="testing",
                         aws_secret_access_key="testing")


def product(instance_type, operation, usd, effective="2026-11-01T00:00:00Z"):
    """One Price List item as GetProducts returns it (a JSON string)."""
    return json.dumps({
        "product": {"productFamily": "ML Instance", "sku": "SKU1",
                    "attributes": {"instanceName": instance_type, "regionCode": REGION,
                                   "usagetype": f"USE1-{operation}:{instance_type}"}},
        "terms": {"OnDemand": {"SKU1.TERM": {"effectiveDate": effective, "priceDimensions": {
            "SKU1.TERM.DIM": {"unit": "Hrs", "pricePerUnit": {"USD": f"{usd:.10f}"}}}}}}})


def price_list_params(instance_type):
    return {"ServiceCode": "AmazonSageMaker", "Filters": [
        {"Type": "TERM_MATCH", "Field": "regionCode", "Value": REGION},
        {"Type": "TERM_MATCH", "Field": "instanceName", "Value": instance_type}]}


def quota(name, value, code="L-TEST0001"):
    return {"ServiceCode": "sagemaker", "QuotaName": name, "QuotaCode": code, "Value": value}


def stub_price(session, instance_type, items):
    stub = Stubber(budget.client("pricing", "us-east-1", session))
    stub.add_response("get_products", {"FormatVersion": "aws_v1", "PriceList": items},
                      price_list_params(instance_type))
    return stub


def stub_quotas(session, applied_pages, defaults=None):
    """ListServiceQuotas pages (each a list of quotas; all but the last carry a NextToken), then
    ListAWSDefaultServiceQuotas if ``defaults`` is given."""
    stub = Stubber(budget.client("service-quotas", REGION, session))
    for number, page in enumerate(applied_pages):
        params = {"ServiceCode": "sagemaker"}
        if number:
            params["NextToken"] = f"page-{number}"
        reply = {"Quotas": page}
        if number < len(applied_pages) - 1:
            reply["NextToken"] = f"page-{number + 1}"
        stub.add_response("list_service_quotas", reply, params)
    if defaults is not None:
        stub.add_response("list_aws_default_service_quotas", {"Quotas": defaults},
                          {"ServiceCode": "sagemaker"})
    return stub


def captured(function, *args, **kwargs):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        result = function(*args, **kwargs)
    return result, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------ the table


def instance_types_named_by_the_notebooks():
    """{(instance type, usage)} from every notebook's parameters cell: *INSTANCE_TYPE in a
    training notebook is training, in 4.x hosting and transform, DEPLOY_INSTANCE_TYPE hosting."""
    named = set()
    for path in run_notebooks.notebooks():
        cells = nbformat.read(path, as_version=4).cells
        (source,) = [c.source for c in cells if "parameters" in c.metadata.get("tags", [])]
        for node in ast.parse(source).body:
            if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)):
                continue
            name = node.targets[0].id
            if not name.endswith("INSTANCE_TYPE") or not node.value.value:
                continue
            if name == "DEPLOY_INSTANCE_TYPE":
                usages = ("hosting",)
            elif path.name.startswith("4."):
                usages = ("hosting", "transform")
            else:
                usages = ("training",)
            named |= {(node.value.value, usage) for usage in usages}
    return named


def test_the_price_table_names_every_instance_type_the_notebooks_name():
    named = instance_types_named_by_the_notebooks()
    assert ("ml.m5.large", "hosting") in named and ("ml.m5.large", "transform") in named
    table = budget.load_prices()
    entries = {(e["instance_type"], e["usage"]): e for e in table["prices"]}
    missing = named - set(entries)
    assert not missing, (f"workshop/prices.json has no entry for {sorted(missing)}: add each with "
                         f"its price, source and date (or usd_per_hour null and a note)")
    for key in named:
        entry = entries[key]
        assert entry["usd_per_hour"] is None or entry["usd_per_hour"] > 0
        assert entry["note"] if entry["usd_per_hour"] is None else entry["source_date"]


def test_the_types_the_issue_names_are_in_the_table_with_their_usage():
    table = budget.load_prices()
    keys = {(e["instance_type"], e["usage"]) for e in table["prices"]}
    for kind in ("ml.g5.xlarge", "ml.g5.12xlarge", "ml.p4d.24xlarge", "ml.g6.xlarge",
                 "ml.g6.12xlarge", "ml.m5.xlarge"):
        assert (kind, "training") in keys
    assert {("ml.m5.large", "hosting"), ("ml.m5.large", "transform")} <= keys
    assert table["region"] == REGION and "on-demand" in table["spot"]


def test_a_price_without_source_or_date_is_refused(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"region": REGION, "spot": "-", "prices": [
        {"instance_type": "ml.g5.xlarge", "usage": "training", "usd_per_hour": 1.0,
         "source": "somewhere"}]}))
    with pytest.raises(ValueError, match="needs its source and the date"):
        budget.load_prices(path)
    path.write_text(json.dumps({"region": REGION, "spot": "-", "prices": [
        {"instance_type": "ml.g5.xlarge", "usage": "inference", "usd_per_hour": None}]}))
    with pytest.raises(ValueError, match="use one of"):
        budget.load_prices(path)


# ------------------------------------------------------------------------------ prices


def test_the_price_list_api_is_preferred_and_its_usage_type_picked():
    session = offline_session()
    items = [product("ml.g5.xlarge", "Host", 1.5), product("ml.g5.xlarge", "Train", 1.2),
             product("ml.g5.xlarge", "Tsform", 1.7)]
    with stub_price(session, "ml.g5.xlarge", items) as stub:
        price = budget.price_of("ml.g5.xlarge", "training", REGION, session)
        stub.assert_no_pending_responses()
    assert price.usd_per_hour == 1.2 and price.source == "Price List API"
    assert price.date.startswith("effective 2026-11-01, read ")
    assert "from Price List API, effective 2026-11-01" in price.describe()


def test_without_the_price_list_api_the_dated_table_is_used_and_said_so():
    session = offline_session()
    stub = Stubber(budget.client("pricing", "us-east-1", session))
    stub.add_client_error("get_products", "AccessDeniedException", "not authorized to call "
                          "pricing:GetProducts", 400, expected_params=price_list_params(
                              "ml.g5.xlarge"))
    with stub:
        price = budget.price_of("ml.g5.xlarge", "training", REGION, session)
    table = {(e["instance_type"], e["usage"]): e for e in budget.load_prices()["prices"]}
    assert price.usd_per_hour == table["ml.g5.xlarge", "training"]["usd_per_hour"]
    text = price.describe()
    assert "workshop/prices.json" in text and "AccessDeniedException" in text
    assert table["ml.g5.xlarge", "training"]["source_date"] in text


def test_several_matching_products_are_not_guessed_between():
    session = offline_session()
    items = [product("ml.g5.xlarge", "Train", 1.2), product("ml.g5.xlarge", "Train", 9.9)]
    with stub_price(session, "ml.g5.xlarge", items):
        price = budget.price_of("ml.g5.xlarge", "training", REGION, session)
    assert price.source != "Price List API" and "2 products matched" in price.fallback_reason


def test_another_region_gets_the_table_price_with_a_warning():
    price = budget.table_price("ml.g5.xlarge", "training", "eu-west-1")
    assert price.usd_per_hour is not None
    assert "us-east-1's price, eu-west-1 may cost more" in price.describe()


# ------------------------------------------------------------------------------ quotas


def test_the_quota_is_found_by_name_across_pages():
    session = offline_session()
    pages = [[quota("ml.g5.xlarge for endpoint usage", 2.0, "L-OTHER")],
             [quota("ml.g5.xlarge for training job usage", 4.0, "L-G5XLTRN")]]
    with stub_quotas(session, pages) as stub:
        found = budget.quota_for("ml.g5.xlarge", "training", REGION, boto_session=session)
        stub.assert_no_pending_responses()
    assert (found.value, found.code, found.level) == (4.0, "L-G5XLTRN", "applied")


def test_a_quota_never_applied_is_read_from_the_aws_defaults():
    session = offline_session()
    with stub_quotas(session, [[]], defaults=[
            quota("ml.g5.xlarge for spot training job usage", 1.0, "L-SPOT")]) as stub:
        found = budget.quota_for("ml.g5.xlarge", "training", REGION, spot=True,
                                 boto_session=session)
        stub.assert_no_pending_responses()
    assert found.name == "ml.g5.xlarge for spot training job usage"
    assert (found.value, found.level) == (1.0, "AWS default")


def test_a_quota_that_may_not_be_read_is_a_warning_not_a_stop():
    session = offline_session()
    quotas = Stubber(budget.client("service-quotas", REGION, session))
    quotas.add_client_error("list_service_quotas", "AccessDeniedException", "no", 400)
    with stub_price(session, "ml.m5.xlarge", [product("ml.m5.xlarge", "Train", 0.23)]), quotas:
        check, out, err = captured(budget.check_training_job, "ml.m5.xlarge", 1, 3600, False,
                                   REGION, 1.0, session)
    assert check.quota.value is None
    assert "may not read Service Quotas" in err and "not checked" in out


# ------------------------------------------------------------------------------ the checks


def test_a_zero_quota_stops_with_its_name_value_region_and_how_to_ask_for_more():
    session = offline_session()
    pages = [[quota("ml.g5.12xlarge for training job usage", 0.0, "L-G512TRN")]]
    with stub_price(session, "ml.g5.12xlarge", [product("ml.g5.12xlarge", "Train", 7.09)]), \
            stub_quotas(session, pages):
        with pytest.raises(budget.QuotaTooSmall) as refused:
            captured(budget.check_training_job, "ml.g5.12xlarge", 2, 3600, False, REGION, 100.0,
                     session)
    message = str(refused.value)
    assert "'ml.g5.12xlarge for training job usage' (L-G512TRN) is 0 in us-east-1" in message
    assert "needs 2 x ml.g5.12xlarge" in message
    assert ("aws service-quotas request-service-quota-increase --service-code sagemaker "
            "--quota-code L-G512TRN --desired-value 2 --region us-east-1") in message
    assert "console.aws.amazon.com/servicequotas/home/services/sagemaker/quotas/L-G512TRN" \
        in message


def test_the_worst_case_over_max_cost_stops_and_names_what_to_change():
    session = offline_session()
    pages = [[quota("ml.p4d.24xlarge for training job usage", 2.0, "L-P4D")]]
    with stub_price(session, "ml.p4d.24xlarge", [product("ml.p4d.24xlarge", "Train", 37.688)]), \
            stub_quotas(session, pages):
        with pytest.raises(budget.BudgetExceeded) as refused:
            captured(budget.check_training_job, "ml.p4d.24xlarge", 2, 7200, False, REGION, 100.0,
                     session)
    # 2 instances x 2 h x $37.688 = $150.75
    assert "worst case 4 instance-hours x $37.688 = $150.75, over MAX_COST_USD=100" in \
        str(refused.value)
    assert "Raise MAX_COST_USD to 150.75" in str(refused.value) and "MAX_RUN" in str(refused.value)


def test_a_spot_job_is_priced_at_its_on_demand_worst_case_with_the_spot_quota():
    records = {}
    for spot in (False, True):
        session = offline_session()
        name = f"ml.g5.xlarge for {'spot ' if spot else ''}training job usage"
        with stub_price(session, "ml.g5.xlarge", [product("ml.g5.xlarge", "Train", 1.408)]), \
                stub_quotas(session, [[quota(name, 1.0)]]):
            check, out, _ = captured(budget.check_training_job, "ml.g5.xlarge", 1, 5400, spot,
                                     REGION, 5.0, session)
        records[spot] = check.record()
        assert records[spot]["quota_name"] == name
    assert records[True]["worst_usd"] == records[False]["worst_usd"] == pytest.approx(1.5 * 1.408)
    assert "spot: billed at most the on-demand price" in out


def test_no_price_refuses_under_a_budget_and_goes_on_without_one():
    session = offline_session()
    for max_cost in (10.0, None):
        budget.forget_clients()
        session = offline_session()
        with stub_price(session, "ml.c5.large", []), \
                stub_quotas(session, [[quota("ml.c5.large for endpoint usage", 1.0)]]):
            if max_cost is None:
                check, out, _ = captured(budget.check_endpoint, "ml.c5.large", 1, None, REGION,
                                         boto_session=session)
                assert check.worst_usd is None and "max_cost_usd=None: not checked" in out
            else:
                with pytest.raises(budget.PriceUnknown, match="MAX_COST_USD=10 cannot be checked"
                                   ".*set MAX_COST_USD = None"):
                    captured(budget.check_endpoint, "ml.c5.large", 1, max_cost, REGION,
                             boto_session=session)


def test_an_endpoint_prints_what_each_further_hour_costs():
    session = offline_session()
    with stub_price(session, "ml.m5.large", [product("ml.m5.large", "Host", 0.115)]), \
            stub_quotas(session, [[quota("ml.m5.large for endpoint usage", 2.0)]]):
        check, out, _ = captured(budget.check_endpoint, "ml.m5.large", 1, 1.0, REGION,
                                 boto_session=session)
    assert check.worst_usd == pytest.approx(0.115)
    assert "bills every hour until it is deleted: $0.115 an hour, $2.76 a day" in out
    assert "quota 'ml.m5.large for endpoint usage' (L-TEST0001, applied) = 2" in out


def test_a_serverless_endpoint_is_not_priced_and_says_why():
    check, out, _ = captured(budget.check_endpoint, "ml.m5.large", 1, 0.0, REGION,
                             serverless=True)
    assert check is None and "billed per request" in out


def test_a_transform_job_uses_the_transform_price_and_quota():
    session = offline_session()
    with stub_price(session, "ml.m5.large", [product("ml.m5.large", "Host", 0.2),
                                             product("ml.m5.large", "Tsform", 0.115)]), \
            stub_quotas(session, [[quota("ml.m5.large for transform job usage", 1.0)]]):
        check, _, _ = captured(budget.check_transform, "ml.m5.large", 1, 1.0, REGION, hours=2,
                               boto_session=session)
    assert check.record()["worst_usd"] == pytest.approx(0.23)
    assert check.quota.name == "ml.m5.large for transform job usage"


# ------------------------------------------------- an SDK v2 Estimator, against moto_server


def estimator_and_requests(instance_type="ml.g5.xlarge", instance_count=1, max_run=3600):
    """A host-mode Estimator as the training notebooks build it, and every SageMaker request
    its session sends from now on: [(operation, params)]."""
    estimator = jobs.workshop_estimator(
        "host", "train_keras.py", {"epochs": 1}, instance_type=instance_type,
        instance_count=instance_count, role_arn=ROLE, bucket=BUCKET, max_run=max_run)
    sent = []
    estimator.sagemaker_session.sagemaker_client.meta.events.register(
        "provide-client-params.sagemaker", lambda model, params, **_: sent.append(
            (model.name, params)))
    return estimator, sent


def guarded_fit(estimator, max_cost_usd):
    """What a training notebook's cell does: the guard, then fit."""
    budget.check_training(estimator, max_cost_usd)
    estimator.fit({"train": f"s3://{BUCKET}/cifar10/train"}, wait=False)


@pytest.fixture(scope="module")
def bucket(moto_server):
    boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
    return BUCKET


def test_the_guard_refuses_a_zero_quota_before_any_create_call(bucket):
    estimator, sent = estimator_and_requests()
    session = estimator.sagemaker_session.boto_session
    with stub_price(session, "ml.g5.xlarge", [product("ml.g5.xlarge", "Train", 1.408)]), \
            stub_quotas(session, [[quota("ml.g5.xlarge for training job usage", 0.0)]]):
        with pytest.raises(budget.QuotaTooSmall, match="is 0 in us-east-1"):
            captured(guarded_fit, estimator, 100.0)
    assert not [name for name, _ in sent if name.startswith("Create")]


def test_the_guard_refuses_a_job_over_max_cost_before_any_create_call(bucket):
    estimator, sent = estimator_and_requests(instance_count=2, max_run=7200)
    session = estimator.sagemaker_session.boto_session
    with stub_price(session, "ml.g5.xlarge", [product("ml.g5.xlarge", "Train", 1.408)]), \
            stub_quotas(session, [[quota("ml.g5.xlarge for training job usage", 2.0)]]):
        with pytest.raises(budget.BudgetExceeded, match=r"\$5.63, over MAX_COST_USD=5"):
            captured(guarded_fit, estimator, 5.0)
    assert not [name for name, _ in sent if name.startswith("Create")]

    budget.forget_clients()  # the same job under a budget it fits: now it is created
    with stub_price(session, "ml.g5.xlarge", [product("ml.g5.xlarge", "Train", 1.408)]), \
            stub_quotas(session, [[quota("ml.g5.xlarge for training job usage", 2.0)]]):
        _, out, _ = captured(guarded_fit, estimator, 6.0)
    (create,) = [params for name, params in sent if name == "CreateTrainingJob"]
    assert create["ResourceConfig"]["InstanceCount"] == 2
    assert "2 x ml.g5.xlarge in us-east-1, worst case 2 x 2 h = 4 instance-hours = $5.63" in out


def test_in_a_local_session_nothing_is_billed_and_nothing_is_asked(probe_estimator):
    estimator = probe_estimator()  # a LocalSession, as in process mode
    result, out, _ = captured(budget.check_training, estimator, 0.0)
    assert result is None and "nothing is billed by SageMaker" in out
    assert not budget._CLIENTS  # no AWS client was even made


def sdk3_python():
    for candidate in (ROOT / ".venv-sdk3", Path(sys.executable).parent.parent.parent /
                      ".venv-sdk3"):
        if (candidate / "bin" / "python").exists():
            return candidate / "bin" / "python"
    pytest.fail(".venv-sdk3 is missing: `make setup` builds it (notebook 6.0's SDK v3 kernel)")


SDK3_SCRIPT = """
import sys
import boto3
from botocore.stub import Stubber
from workshop import budget
session = boto3.Session(region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
stub = Stubber(budget.client("service-quotas", "us-east-1", session))
stub.add_response("list_service_quotas", {"Quotas": [{"QuotaName":
    "ml.g5.xlarge for training job usage", "QuotaCode": "L-X", "Value": 1.0}]},
    {"ServiceCode": "sagemaker"})
with stub:
    check = budget.check_training_job("ml.g5.xlarge", 1, 3600, False, "us-east-1", 5.0, session,
                                      live_prices=False)
from importlib.metadata import version
print("RECORD", check.record()["worst_usd"], version("sagemaker").split(".")[0],
      "sagemaker.tensorflow" in sys.modules or "sagemaker.estimator" in sys.modules)
"""


def test_check_training_job_runs_under_sdk_v3_without_sdk_v2(tmp_path):
    """Notebook 6.0's kernel has SDK v3, where `import sagemaker.tensorflow` fails."""
    result = subprocess.run([str(sdk3_python()), "-c", SDK3_SCRIPT], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(PHASE0_DIR)})
    assert result.returncode == 0, result.stderr[-2000:]
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("RECORD")]
    table = {(e["instance_type"], e["usage"]): e for e in budget.load_prices()["prices"]}
    worst, major, v2_loaded = line.split()[1:]
    assert float(worst) == pytest.approx(table["ml.g5.xlarge", "training"]["usd_per_hour"])
    assert (major, v2_loaded) == ("3", "False")


def test_readme_shows_the_worst_cases_the_command_prints(capsys):
    """README's table of each host step's worst case is `python -m workshop.budget`'s output:
    after a parameters cell or a price changes, run it and paste the table."""
    budget.main()
    table = capsys.readouterr().out.strip()
    readme = (ROOT / "README.md").read_text()
    assert table in readme, ("README's worst-case table is stale: run `python -m workshop.budget` "
                             "in code/phase0 and paste its output under 'Costs, quotas and "
                             "clean-up'")
    assert "| `4.1` | endpoint, an hour | 1 x ml.m5.large | 1 | 0.115 |" in table
