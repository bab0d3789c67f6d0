# python3-systemd (systemd/journal.py, 235): only what gnocchi/server and helper/ call.
# Field values are str, bytes or anything str() takes (journal.send converts them).
LOG_EMERG: int
LOG_ALERT: int
LOG_CRIT: int
LOG_ERR: int
LOG_WARNING: int
LOG_NOTICE: int
LOG_INFO: int
LOG_DEBUG: int

def send(
    MESSAGE: str,
    MESSAGE_ID: object = None,
    CODE_FILE: object = None,
    CODE_LINE: object = None,
    CODE_FUNC: object = None,
    **kwargs: object,
) -> None: ...
