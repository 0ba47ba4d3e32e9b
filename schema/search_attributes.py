"""The search attributes of an execution: one definition for the workflow, the client, the dev
server's registration and the compose file's set-up."""

from temporalio.common import SearchAttributeKey

TENANT = SearchAttributeKey.for_keyword("OpsTenant")
ENVIRONMENT = SearchAttributeKey.for_keyword("OpsEnvironment")
ACTOR = SearchAttributeKey.for_keyword("OpsActor")
STATUS = SearchAttributeKey.for_keyword("OpsStatus")
SLA_CLASS = SearchAttributeKey.for_keyword("OpsSlaClass")
APPROVAL_STATE = SearchAttributeKey.for_keyword("OpsApprovalState")
ASSETS = SearchAttributeKey.for_keyword_list("OpsAssets")

ALL = (TENANT, ENVIRONMENT, ACTOR, STATUS, SLA_CLASS, APPROVAL_STATE, ASSETS)

# name -> the type name `temporal server start-dev --search-attribute Name=Type` expects
SEARCH_ATTRIBUTES: dict[str, str] = {
    key.name: ("KeywordList" if key is ASSETS else "Keyword") for key in ALL
}
