"""Vocabularies as closed constants, and the one place where IRIs are minted.

Every IRI provgraph writes is built here. Terms are attributes of closed classes, so a
typo is an ``AttributeError`` at import time rather than a silently wrong IRI; the test
suite checks that each ``PG`` term is defined in ``ontologies/provgraph.ttl``.

IRI scheme (all deterministic; see ``docs/identifiers.md``)::

    {base}run/{run_id}            a workflow run (prov:Activity, pg:WorkflowRun)
    {base}graph/{run_id}          the named graph holding that run's statements
    {base}task/{task_id}          a task execution (prov:Activity, pg:Task)
    {base}task/{task_id}/in/{n}   a value the task used (per-task, never shared)
    {base}task/{task_id}/out/{n}  a value the task generated (per-task, never shared)
    urn:provgraph:workflow/{name} a workflow (prov:Plan, pg:Workflow), by name, shared
    urn:provgraph:campaign/{name} a campaign (pg:Campaign), by name, shared by facilities
    ni:///sha-256;{b64url}        a data artifact, named by its content (RFC 6920)

``{base}`` is the facility's base IRI (``Settings.base_iri``), so two facilities never
mint the same task IRI while content-hashed entities are shared by everyone.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import quote

__all__ = ["DCTERMS", "PG", "PG_NS", "PROV", "PROV_NS", "RDF", "RDFS", "XSD", "Minter"]

PROV_NS: Final = "http://www.w3.org/ns/prov#"
PG_NS: Final = "https://w3id.org/provgraph/ns#"
RDF_NS: Final = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
RDFS_NS: Final = "http://www.w3.org/2000/01/rdf-schema#"
XSD_NS: Final = "http://www.w3.org/2001/XMLSchema#"
DCTERMS_NS: Final = "http://purl.org/dc/terms/"
SHARED_BASE: Final = "urn:provgraph:"


class _Vocabulary:
    """A closed set of terms: attributes are full IRIs; unknown names raise."""

    _ns: str = ""
    _terms: tuple[str, ...] = ()

    _iris: dict[str, str] = {}

    def __init_subclass__(cls) -> None:
        for term in cls._terms:
            setattr(cls, term, cls._ns + term)
        cls._iris = {t: cls._ns + t for t in cls._terms}

    @classmethod
    def iris(cls) -> dict[str, str]:
        """Term name → IRI (a shared read-only mapping: do not modify)."""
        return cls._iris


class PROV(_Vocabulary):
    _ns = PROV_NS
    _terms = (
        "Activity", "Entity", "Agent", "Person", "SoftwareAgent", "Plan", "Location",
        "Usage", "Generation", "Association", "Collection",
        "used", "wasGeneratedBy", "wasAssociatedWith", "wasInformedBy", "wasDerivedFrom",
        "wasAttributedTo", "actedOnBehalfOf", "startedAtTime", "endedAtTime",
        "generatedAtTime", "atLocation", "value", "qualifiedUsage", "qualifiedGeneration",
        "qualifiedAssociation", "entity", "activity", "agent", "hadPlan", "hadRole",
        "atTime", "hadMember", "wasStartedBy", "wasEndedBy", "wasInvalidatedBy",
    )  # fmt: skip
    Activity: str; Entity: str; Agent: str; Person: str; SoftwareAgent: str; Plan: str
    Location: str; Usage: str; Generation: str; Association: str; Collection: str
    used: str; wasGeneratedBy: str; wasAssociatedWith: str; wasInformedBy: str
    wasDerivedFrom: str; wasAttributedTo: str; actedOnBehalfOf: str; startedAtTime: str
    endedAtTime: str; generatedAtTime: str; atLocation: str; value: str
    qualifiedUsage: str; qualifiedGeneration: str; qualifiedAssociation: str
    entity: str; activity: str; agent: str; hadPlan: str; hadRole: str; atTime: str
    hadMember: str; wasStartedBy: str; wasEndedBy: str; wasInvalidatedBy: str


class PG(_Vocabulary):
    """Terms of ``ontologies/provgraph.ttl`` (prefix ``pg:``)."""

    _ns = PG_NS
    _terms = (
        # classes
        "Campaign", "Workflow", "WorkflowRun", "Task", "Host", "Facility", "User",
        "DataArtifact", "Value", "TelemetrySample",
        # structure
        "inCampaign", "inWorkflowRun", "executesWorkflow", "parentTask", "function",
        "status", "attempt", "host", "facility", "hostname", "submittedAtTime",
        # data identity and usage attributes
        "contentHash", "hashAlgorithm", "path", "sizeBytes", "parameterName", "valueType",
        "mediaType",
        # failure
        "errorType", "errorMessage", "traceback",
        # telemetry
        "telemetry", "telemetryPhase", "cpuPercent", "cpuTimeUser", "cpuTimeSystem",
        "memoryRss", "memoryPercent", "diskReadBytes", "diskWriteBytes",
        "netSentBytes", "netRecvBytes", "gpuIndex", "gpuMemoryUsed", "gpuUtilization",
        "gpuPowerWatts", "sampledAt",
        # source tool
        "sourceTool", "externalId",
    )  # fmt: skip
    Campaign: str; Workflow: str; WorkflowRun: str; Task: str; Host: str
    Facility: str; User: str; DataArtifact: str; Value: str; TelemetrySample: str
    inCampaign: str; inWorkflowRun: str; executesWorkflow: str; parentTask: str
    function: str; status: str; attempt: str; host: str; facility: str; hostname: str
    submittedAtTime: str
    contentHash: str; hashAlgorithm: str; path: str; sizeBytes: str
    parameterName: str; valueType: str; mediaType: str
    errorType: str; errorMessage: str; traceback: str
    telemetry: str; telemetryPhase: str; cpuPercent: str; cpuTimeUser: str
    cpuTimeSystem: str; memoryRss: str; memoryPercent: str; diskReadBytes: str
    diskWriteBytes: str; netSentBytes: str; netRecvBytes: str; gpuIndex: str
    gpuMemoryUsed: str; gpuUtilization: str; gpuPowerWatts: str; sampledAt: str
    sourceTool: str; externalId: str


class RDF(_Vocabulary):
    _ns = RDF_NS
    _terms = ("type",)
    type: str


class RDFS(_Vocabulary):
    _ns = RDFS_NS
    _terms = ("label", "comment")
    label: str
    comment: str


class XSD(_Vocabulary):
    _ns = XSD_NS
    _terms = ("string", "integer", "double", "boolean", "dateTime", "long")
    string: str
    integer: str
    double: str
    boolean: str
    dateTime: str
    long: str


class DCTERMS(_Vocabulary):
    _ns = DCTERMS_NS
    _terms = ("isPartOf", "identifier", "title", "creator")
    isPartOf: str
    identifier: str
    title: str
    creator: str


#: Status values of ``pg:status`` (documented in the ontology).
STATUS_RUNNING: Final = "running"
STATUS_FINISHED: Final = "finished"
STATUS_FAILED: Final = "failed"
STATUSES: Final = (STATUS_RUNNING, STATUS_FINISHED, STATUS_FAILED)

_SAFE = "-._~:@!$&'()*+,;="


def segment(text: str) -> str:
    """Percent-encode ``text`` so it is one safe IRI path segment."""
    return quote(str(text), safe=_SAFE)


_UNSAFE = re.compile(r"[^A-Za-z0-9\-._~:@!$&'()*+,;=]")


def _id_segment(text: str) -> str:
    """:func:`segment`, with a fast exit for IDs that need no encoding (the usual case)."""
    return text if _UNSAFE.search(text) is None else quote(text, safe=_SAFE)


class Minter:
    """Mints the deterministic IRIs of one facility (see the module docstring)."""

    __slots__ = ("base",)

    def __init__(self, base: str) -> None:
        self.base = base

    def run(self, run_id: str) -> str:
        return f"{self.base}run/{_id_segment(run_id)}"

    def graph(self, run_id: str) -> str:
        return f"{self.base}graph/{_id_segment(run_id)}"

    def task(self, task_id: str) -> str:
        return f"{self.base}task/{_id_segment(task_id)}"

    @staticmethod
    def workflow(name: str) -> str:
        """Workflows and campaigns are named across facilities: the same name, one IRI."""
        return f"{SHARED_BASE}workflow/{segment(name)}"

    @staticmethod
    def campaign(name: str) -> str:
        return f"{SHARED_BASE}campaign/{segment(name)}"

    def host(self, hostname: str) -> str:
        return f"{self.base}host/{segment(hostname)}"

    def user(self, name: str) -> str:
        return f"{self.base}user/{segment(name)}"

    def facility(self, name: str) -> str:
        return f"{self.base}facility/{segment(name)}"

    def function(self, qualname: str) -> str:
        return f"{self.base}function/{segment(qualname)}"

    @staticmethod
    def value(activity_iri: str, direction: str, name: str) -> str:
        """A per-task value entity: ``direction`` is ``in`` or ``out``."""
        return f"{activity_iri}/{direction}/{segment(name)}"

    @staticmethod
    def qualified(activity_iri: str, direction: str, name: str) -> str:
        """The qualified usage/generation node of one named argument or output."""
        return f"{activity_iri}/{'usage' if direction == 'in' else 'generation'}/{segment(name)}"
