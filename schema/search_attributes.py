"""Search attribute names and types: registered by the dev stack and the compose file."""

SEARCH_ATTRIBUTES: dict[str, str] = {
    "OpsTenant": "Keyword",
    "OpsEnvironment": "Keyword",
    "OpsActor": "Keyword",
    "OpsStatus": "Keyword",
    "OpsSlaClass": "Keyword",
    "OpsApprovalState": "Keyword",
    "OpsAssets": "KeywordList",
}
