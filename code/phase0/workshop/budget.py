"""A budget guard before every paid SageMaker call: the worst case, its price, the quota.

    budget.check_training(estimator, MAX_COST_USD)            # before estimator.fit(...) (SDK v2)
    budget.check_training_job(INSTANCE_TYPE, INSTANCE_COUNT, MAX_RUN, USE_SPOT, region,
                              MAX_COST_USD, boto_session)     # the same without SDK v2 (6.0)
    budget.check_endpoint(INSTANCE_TYPE, 1, MAX_COST_USD, region, serverless=SERVERLESS)
    budget.check_transform(INSTANCE_TYPE, 1, MAX_COST_USD, region)

Each prints, before anything is created: the worst case in instance-hours and USD, where the price
comes from (the AWS Price List API, or ``prices.json`` with its source and date), and the Service
Quota it needs with its value; then raises a ``BudgetError`` when the job cannot start:

- ``QuotaTooSmall``: the account's quota for that instance type and usage is below the instance
  count (SageMaker would refuse with ResourceLimitExceeded); the message says how to ask for more.
- ``BudgetExceeded``: the worst case is over ``max_cost_usd``; the message names the parameters.
- ``PriceUnknown``: ``max_cost_usd`` is set but no price was found, so it cannot be checked
  (``max_cost_usd=None`` starts without a cost check, saying so).

Worst cases. A training job: instances x MaxRuntimeInSeconds at the on-demand price. Managed spot
bills BillableTimeInSeconds (at most the training time) at that same price, so a spot job's worst
case is the on-demand one. An endpoint bills every instance-hour until it is deleted: the worst
case is instances x ``hours`` (how long the notebook may keep it; 4.1 deletes it in ``finally``)
and the price of each further hour is printed. A transform job has no time limit of its own: the
worst case is instances x ``hours`` too. A serverless endpoint bills per request (compute time x
memory) and nothing while idle: no instance-hours, no instance quota, not priced here.

A quota that cannot be read (no permission, no endpoint) is a warning, not a stop: SageMaker
checks quotas itself at Create* and a refusal costs nothing. A price that cannot be read falls back
to the table; a price found nowhere stops the job under a MAX_COST_USD, because money is at stake.

Imports only boto3/botocore (notebook 6.0 runs it under SDK v3). The clients come from
``client(service, region, boto_session)``, cached, so a test can attach botocore's Stubber.
"""

import json
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Optional

PRICES_PATH = Path(__file__).with_name("prices.json")
USAGES = ("training", "hosting", "transform")
# The operation part of a SageMaker Price List usage type, "<region prefix>-<op>:<instance type>"
# (e.g. USE1-Train:ml.g5.2xlarge, USE1-Host:ml.m5.large, USE1-Tsform:ml.m5.large).
PRICE_LIST_OPERATION = {"training": "Train", "hosting": "Host", "transform": "Tsform"}
PRICING_REGION = "us-east-1"  # the Price List API answers in us-east-1 (and a few others)
# Quota names as SageMaker's ResourceLimitExceeded errors and Service Quotas spell them.
QUOTA_NAMES = {"training": "{} for training job usage",
               "spot": "{} for spot training job usage",
               "hosting": "{} for endpoint usage",
               "transform": "{} for transform job usage"}
HOURS_PER_DAY = 24


class BudgetError(RuntimeError):
    """A paid call that must not start; the message says what to change."""


class BudgetExceeded(BudgetError):
    """The worst case is over MAX_COST_USD."""


class QuotaTooSmall(BudgetError):
    """The account's Service Quota for the instance type and usage is below the instance count."""


class PriceUnknown(BudgetError):
    """MAX_COST_USD is set, but no price was found for the instance type and usage."""


# ------------------------------------------------------------------------------ clients

_CLIENTS = {}  # (service, region, id(boto_session)) -> (boto_session, client)


def client(service, region, boto_session=None):
    """A boto3 client, one per service, region and session (cached: attach a Stubber to it).
    Few retries and short timeouts: a preflight must not hang where a service is unreachable."""
    import boto3
    from botocore.config import Config

    key = (service, region, id(boto_session))
    cached = _CLIENTS.get(key)
    if cached is None or cached[0] is not boto_session:
        session = boto_session or boto3.Session()
        config = Config(retries={"total_max_attempts": 2, "mode": "standard"},
                        connect_timeout=5, read_timeout=20)
        cached = (boto_session, session.client(service, region_name=region, config=config))
        _CLIENTS[key] = cached
    return cached[1]


def forget_clients():
    """Drop the cached clients (after the environment's endpoint or credentials changed)."""
    _CLIENTS.clear()


def _short(err):
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def _error_code(err):
    return getattr(err, "response", {}).get("Error", {}).get("Code", "")


# ------------------------------------------------------------------------------ prices


@dataclass
class Price:
    instance_type: str
    usage: str
    region: str
    usd_per_hour: Optional[float]
    source: str        # "Price List API" or the table entry's source
    date: str          # the source's date (table) or "effective <date>, read <today>" (API)
    confidence: str
    fallback_reason: str = ""  # why the API was not used

    def describe(self):
        if self.usd_per_hour is None:
            return (f"no price for {self.instance_type} ({self.usage}) in {self.region}"
                    f"{': ' + self.fallback_reason if self.fallback_reason else ''}")
        where = (f"{self.source}, {self.date}" if self.source == "Price List API" else
                 f"workshop/prices.json ({self.confidence}): {self.source}; date: {self.date}")
        text = f"${self.usd_per_hour:g} per instance-hour, from {where}"
        if self.fallback_reason:
            text += f" [Price List API not used: {self.fallback_reason}]"
        return text


def load_prices(path=PRICES_PATH):
    """prices.json, checked: every entry has a type, a known usage, a price or null, a source
    and a date when it has a price."""
    table = json.loads(Path(path).read_text())
    for key in ("region", "prices", "spot"):
        if key not in table:
            raise ValueError(f"{path} lacks {key!r}: a price table needs its region, its prices "
                             f"and what spot costs at worst.")
    for entry in table["prices"]:
        if entry.get("usage") not in USAGES:
            raise ValueError(f"{path}: {entry.get('instance_type')} has usage "
                             f"{entry.get('usage')!r}; use one of {USAGES}.")
        if entry.get("usd_per_hour") is not None and not (entry.get("source")
                                                          and entry.get("source_date")):
            raise ValueError(f"{path}: the price of {entry['instance_type']} "
                             f"({entry['usage']}) needs its source and the date it shows.")
    return table


def table_price(instance_type, usage, region, prices=None):
    """The table's price (usd_per_hour None when it has none). A region other than the table's
    gets the table's figure with a warning in its confidence."""
    prices = prices or load_prices()
    found = [e for e in prices["prices"]
             if e["instance_type"] == instance_type and e["usage"] == usage]
    if not found or found[0].get("usd_per_hour") is None:
        note = found[0].get("note", "") if found else ""
        return Price(instance_type, usage, region, None, "workshop/prices.json", "",
                     "no price found", note or "not in workshop/prices.json")
    entry = found[0]
    confidence = entry["confidence"]
    if region != prices["region"]:
        confidence += f"; this is {prices['region']}'s price, {region} may cost more"
    return Price(instance_type, usage, region, float(entry["usd_per_hour"]), entry["source"],
                 entry["source_date"], confidence)


class PriceListUnavailable(Exception):
    """The Price List API gave no single price (no permission, no endpoint, no match)."""


def live_price(instance_type, usage, region, boto_session=None):
    """The on-demand USD price per hour from the AWS Price List API (GetProducts, ServiceCode
    AmazonSageMaker, filtered by regionCode and instanceName; the product whose usage type's
    operation is Train/Host/Tsform; its OnDemand dimension in Hrs). Raises PriceListUnavailable."""
    from botocore.exceptions import BotoCoreError, ClientError

    pricing = client("pricing", PRICING_REGION, boto_session)
    filters = [{"Type": "TERM_MATCH", "Field": "regionCode", "Value": region},
               {"Type": "TERM_MATCH", "Field": "instanceName", "Value": instance_type}]
    try:
        items = []
        for page in pricing.get_paginator("get_products").paginate(
                ServiceCode="AmazonSageMaker", Filters=filters):
            items += [json.loads(item) if isinstance(item, str) else item
                      for item in page.get("PriceList", [])]
    except (ClientError, BotoCoreError) as err:
        raise PriceListUnavailable(_short(err)) from None
    wanted = PRICE_LIST_OPERATION[usage]
    matched = [item for item in items if _operation(item) == wanted]
    if len(matched) != 1:
        raise PriceListUnavailable(f"{len(matched)} products matched {instance_type} "
                                   f"{wanted} in {region}")
    terms = list(matched[0].get("terms", {}).get("OnDemand", {}).values())
    dimensions = [d for term in terms for d in term.get("priceDimensions", {}).values()
                  if d.get("unit", "").lower() == "hrs" and "USD" in d.get("pricePerUnit", {})]
    if len(dimensions) != 1:
        raise PriceListUnavailable(f"{len(dimensions)} hourly USD prices for {instance_type} "
                                   f"{wanted} in {region}")
    effective = (terms[0].get("effectiveDate") or "")[:10] or "no effective date"
    return Price(instance_type, usage, region, float(dimensions[0]["pricePerUnit"]["USD"]),
                 "Price List API", f"effective {effective}, read {date.today().isoformat()}",
                 "AWS Price List API")


def _operation(item):
    usage_type = item.get("product", {}).get("attributes", {}).get("usagetype", "")
    return usage_type.split(":", 1)[0].rsplit("-", 1)[-1] if ":" in usage_type else ""


def price_of(instance_type, usage, region, boto_session=None, live=True, prices=None):
    """The Price List API's price, else the table's (with why the API was not used)."""
    reason = "not asked (live=False)"
    if live:
        try:
            return live_price(instance_type, usage, region, boto_session)
        except PriceListUnavailable as err:
            reason = str(err)
    price = table_price(instance_type, usage, region, prices)
    price.fallback_reason = (reason if price.usd_per_hour is not None
                             else f"Price List API: {reason}; prices.json: {price.fallback_reason}")
    return price


# ------------------------------------------------------------------------------ quotas


@dataclass
class Quota:
    name: str
    region: str
    value: Optional[float] = None
    code: str = ""
    level: str = ""     # "applied" or "AWS default"
    problem: str = ""   # why the value is unknown

    def describe(self):
        if self.value is None:
            return f"quota '{self.name}': not checked ({self.problem})"
        return f"quota '{self.name}' ({self.code}, {self.level}) = {self.value:g} in {self.region}"

    def how_to_raise(self, desired):
        code = self.code or "<QuotaCode>"
        return (f"Request {desired:g} or more in the Service Quotas console "
                f"(https://{self.region}.console.aws.amazon.com/servicequotas/home/services/"
                f"sagemaker/quotas/{code}) or with `aws service-quotas "
                f"request-service-quota-increase --service-code sagemaker --quota-code {code} "
                f"--desired-value {desired:g} --region {self.region}`; approval can take a day.")


def quota_name(instance_type, usage, spot=False):
    return QUOTA_NAMES["spot" if usage == "training" and spot else usage].format(instance_type)


def quota_for(instance_type, usage, region, spot=False, boto_session=None):
    """The account's quota for the instance type and usage: ListServiceQuotas (applied values),
    else ListAWSDefaultServiceQuotas, both paginated. A quota that cannot be read comes back
    with value None and the reason."""
    from botocore.exceptions import BotoCoreError, ClientError

    quota = Quota(quota_name(instance_type, usage, spot), region)
    quotas = client("service-quotas", region, boto_session)
    try:
        for operation, level in (("list_service_quotas", "applied"),
                                 ("list_aws_default_service_quotas", "AWS default")):
            for page in quotas.get_paginator(operation).paginate(ServiceCode="sagemaker"):
                for found in page.get("Quotas", []):
                    if found.get("QuotaName") == quota.name:
                        quota.value, quota.code, quota.level = (float(found["Value"]),
                                                                found.get("QuotaCode", ""), level)
                        return quota
    except ClientError as err:
        if "AccessDenied" in _error_code(err):
            quota.problem = ("this identity may not read Service Quotas "
                             "(servicequotas:ListServiceQuotas); SageMaker checks it at start")
        else:
            quota.problem = f"Service Quotas did not answer: {_short(err)}"
        return quota
    except BotoCoreError as err:
        quota.problem = f"Service Quotas unreachable: {_short(err)}"
        return quota
    quota.problem = f"no quota of that name in {region} (is the type offered there?)"
    return quota


# ------------------------------------------------------------------------------ the checks


@dataclass
class Check:
    """What a guard call found: the worst case, the price and the quota."""
    what: str
    instance_type: str
    instance_count: int
    hours: float
    region: str
    price: Price
    quota: Optional[Quota]
    max_cost_usd: Optional[float]
    spot: bool = False
    per_hour_until_deleted: bool = False

    @property
    def instance_hours(self):
        return self.instance_count * self.hours

    @property
    def worst_usd(self):
        if self.price is None or self.price.usd_per_hour is None:
            return None
        return self.instance_hours * self.price.usd_per_hour

    def lines(self):
        lines = [f"{self.what}: {self.instance_count} x {self.instance_type} in {self.region}, "
                 f"worst case {self.instance_count} x {self.hours:g} h = "
                 f"{self.instance_hours:g} instance-hours"
                 + (f" = {dollars(self.worst_usd)}" if self.worst_usd is not None else "")]
        if self.spot:
            lines.append("  spot: billed at most the on-demand price for at most the training "
                         "time, so the on-demand worst case holds")
        lines.append("  price: " + self.price.describe())
        if self.per_hour_until_deleted and self.price.usd_per_hour is not None:
            hourly = self.instance_count * self.price.usd_per_hour
            lines.append(f"  an endpoint bills every hour until it is deleted: ${hourly:.3f} an "
                         f"hour, ${hourly * HOURS_PER_DAY:.2f} a day left running")
        if self.quota is not None:
            lines.append("  " + self.quota.describe())
        budget = ("none (max_cost_usd=None: not checked)" if self.max_cost_usd is None
                  else f"${self.max_cost_usd:g}")
        lines.append(f"  MAX_COST_USD: {budget}")
        return lines

    def record(self):
        """A small dict for printing and tests."""
        return {"what": self.what, "instance_type": self.instance_type,
                "instance_count": self.instance_count, "hours": self.hours,
                "instance_hours": self.instance_hours, "worst_usd": self.worst_usd,
                "usd_per_hour": self.price.usd_per_hour, "price_source": self.price.source,
                "price_date": self.price.date, "region": self.region,
                "quota_name": self.quota.name if self.quota else None,
                "quota_value": self.quota.value if self.quota else None,
                "max_cost_usd": self.max_cost_usd}


def dollars(usd):
    """$5.63, but $0.115: small amounts keep their third decimal."""
    return f"${usd:.2f}" if usd >= 1 else f"${usd:.3f}"


def decide(check, raise_with):
    """Print the check, then raise if the quota is too small or the worst case over budget.
    raise_with: the parameters to name in BudgetExceeded's message."""
    print("\n".join(check.lines()))
    quota = check.quota
    if quota is not None and quota.value is not None and quota.value < check.instance_count:
        raise QuotaTooSmall(
            f"{check.what} needs {check.instance_count} x {check.instance_type}, but the quota "
            f"'{quota.name}' ({quota.code}) is {quota.value:g} in {check.region}. "
            + quota.how_to_raise(check.instance_count))
    if quota is not None and quota.value is None:
        print(f"  WARNING: quota not checked: {quota.problem}", file=sys.stderr)
    if check.max_cost_usd is None:
        return check
    if check.worst_usd is None:
        raise PriceUnknown(
            f"MAX_COST_USD={check.max_cost_usd:g} cannot be checked: {check.price.describe()}. "
            f"Add the price to workshop/prices.json with its source and date, allow "
            f"pricing:GetProducts, or set MAX_COST_USD = None to start without a cost check.")
    if check.worst_usd > check.max_cost_usd:
        raise BudgetExceeded(
            f"{check.what}: worst case {check.instance_hours:g} instance-hours x "
            f"${check.price.usd_per_hour:g} = ${check.worst_usd:.2f}, over MAX_COST_USD="
            f"{check.max_cost_usd:g}. Raise MAX_COST_USD to {check.worst_usd:.2f} or more, or "
            f"lower {raise_with}.")
    return check


def check_training_job(instance_type, instance_count, max_run_seconds, spot, region,
                       max_cost_usd, boto_session=None, live_prices=True):
    """Before CreateTrainingJob: worst case instances x max_run at the on-demand price (spot
    included), the quota '<type> for [spot ]training job usage'. No SDK v2 on this path."""
    count = int(instance_count or 1)
    check = Check("training job", instance_type, count, float(max_run_seconds) / 3600, region,
                  price_of(instance_type, "training", region, boto_session, live_prices),
                  quota_for(instance_type, "training", region, spot, boto_session),
                  max_cost_usd, spot=bool(spot))
    return decide(check, "MAX_RUN (seconds), INSTANCE_COUNT, or pick a cheaper INSTANCE_TYPE")


def check_training(estimator, max_cost_usd, live_prices=True):
    """check_training_job for an SDK v2 Estimator about to fit(); a LocalSession (process and
    local mode) bills nothing: one line, no check."""
    session = estimator.sagemaker_session
    if session is None or getattr(session, "local_mode", False):
        print(f"{estimator.instance_type}: runs on this machine, nothing is billed by SageMaker "
              f"(no budget check)")
        return None
    return check_training_job(estimator.instance_type, estimator.instance_count,
                              estimator.max_run, bool(estimator.use_spot_instances),
                              session.boto_region_name, max_cost_usd, session.boto_session,
                              live_prices)


def check_endpoint(instance_type, instance_count, max_cost_usd, region, hours=1,
                   serverless=False, boto_session=None, live_prices=True):
    """Before CreateModel/CreateEndpointConfig/CreateEndpoint: worst case instances x ``hours``
    of hosting (it bills until deleted: the hourly and daily figures are printed too), the
    quota '<type> for endpoint usage'. Serverless: nothing to price or check, said so."""
    if serverless:
        print("serverless endpoint: billed per request (compute time x memory), nothing while "
              "idle; no instance-hours to price, no instance quota (MAX_COST_USD not applied)")
        return None
    count = int(instance_count or 1)
    check = Check("endpoint", instance_type, count, float(hours), region,
                  price_of(instance_type, "hosting", region, boto_session, live_prices),
                  quota_for(instance_type, "hosting", region, boto_session=boto_session),
                  max_cost_usd, per_hour_until_deleted=True)
    return decide(check, "the instance count or pick a cheaper INSTANCE_TYPE")


def check_transform(instance_type, instance_count, max_cost_usd, region, hours=1,
                    boto_session=None, live_prices=True):
    """Before CreateTransformJob: worst case instances x ``hours`` (a transform job has no time
    limit; 4.1 stops it in ``finally``), the quota '<type> for transform job usage'."""
    count = int(instance_count or 1)
    check = Check("transform job", instance_type, count, float(hours), region,
                  price_of(instance_type, "transform", region, boto_session, live_prices),
                  quota_for(instance_type, "transform", region, boto_session=boto_session),
                  max_cost_usd)
    return decide(check, "the instance count or pick a cheaper INSTANCE_TYPE")


# ------------------------------------------------------------------------------ the notebooks


def parameters_of(path):
    """The literal values of a notebook's parameters cell: {name: value}."""
    import ast

    cells = json.loads(Path(path).read_text())["cells"]
    (source,) = ["".join(c["source"]) for c in cells
                 if "parameters" in c.get("metadata", {}).get("tags", [])]
    values = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            values[node.targets[0].id] = node.value.value
    return values


def notebook_worst_cases(folder=None):
    """What each host-mode step of the notebooks may cost at most with their parameters' defaults
    and the table's prices (no AWS): [(notebook, step, instances, type, hours, USD or None)]."""
    from . import PHASE0_DIR

    rows = []
    from .run_notebooks import language_of

    paths = sorted((p for p in Path(folder or PHASE0_DIR).glob("[0-9]*.ipynb")
                    if language_of(p) is None),  # a translation costs what its English costs
                   key=lambda p: tuple(int(x) for x in p.name.split(".")[:2]))
    for path in paths:
        values, number = parameters_of(path), ".".join(path.name.split(".")[:2])
        kind = values.get("INSTANCE_TYPE")
        if not kind:
            continue
        steps = []
        if number.startswith("4."):
            steps = [("endpoint, an hour", "hosting", 1, 1.0),
                     ("batch transform, an hour", "transform", 1, 1.0)]
        else:
            hours = float(values.get("MAX_RUN", 0)) / 3600
            steps = [("training job, MAX_RUN", "training", values.get("INSTANCE_COUNT", 1), hours)]
            if "DISTRIBUTED_INSTANCE_COUNT" in values:  # 6.0: its distributed jobs, each
                steps.append(("each distributed training job, MAX_RUN", "training",
                              values["DISTRIBUTED_INSTANCE_COUNT"], hours))
        if values.get("DEPLOY_INSTANCE_TYPE"):
            rows.append((number, "endpoint, an hour", 1, values["DEPLOY_INSTANCE_TYPE"], 1.0,
                         _usd(values["DEPLOY_INSTANCE_TYPE"], "hosting", 1, 1.0)))
        rows += [(number, step, count, kind, hours, _usd(kind, usage, count, hours))
                 for step, usage, count, hours in steps]
    return rows


def _usd(instance_type, usage, count, hours):
    price = table_price(instance_type, usage, PRICING_REGION).usd_per_hour
    return None if price is None else round(count * hours * price, 3)


def main():
    """``python -m workshop.budget``: each notebook's worst case, as README's table shows it."""
    print("| notebook | step | instances | hours | worst case, USD (us-east-1, prices.json) |")
    print("|---|---|---|---|---|")
    for number, step, count, kind, hours, usd in notebook_worst_cases():
        cost = "no price" if usd is None else f"{usd:.3f}"
        print(f"| `{number}` | {step} | {count} x {kind} | {hours:g} | {cost} |")  # not "| 1.2 "


if __name__ == "__main__":
    main()
