"""What a client of seproxy needs: return values, the JSON codec, the RPC client."""

from seproxy.transfer.returnvalues import (
    S_ERROR,
    S_OK,
    SErrorException,
    convertToReturnValue,
    isReturnStructure,
    returnValueOrRaise,
)
from seproxy.transfer.credentials import ClientCredentials, find_credentials
from seproxy.transfer.rpc_client import RPCClient

__all__ = [
    "S_OK",
    "S_ERROR",
    "SErrorException",
    "convertToReturnValue",
    "isReturnStructure",
    "returnValueOrRaise",
    "ClientCredentials",
    "find_credentials",
    "RPCClient",
]
