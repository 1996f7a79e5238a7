"""What a client of seproxy needs: return values, the JSON codec, the RPC and transfer clients."""

from seproxy.transfer.credentials import BearerToken, ClientCredentials, find_bearer_token, find_credentials
from seproxy.transfer.returnvalues import (
    S_ERROR,
    S_OK,
    SErrorException,
    convertToReturnValue,
    isReturnStructure,
    returnValueOrRaise,
)
from seproxy.transfer.rpc_client import RPCClient
from seproxy.transfer.se_proxy_client import StorageElementProxyClient
from seproxy.transfer.transfer_client import TransferClient

__all__ = [
    "S_ERROR",
    "S_OK",
    "BearerToken",
    "ClientCredentials",
    "RPCClient",
    "SErrorException",
    "StorageElementProxyClient",
    "TransferClient",
    "convertToReturnValue",
    "find_bearer_token",
    "find_credentials",
    "isReturnStructure",
    "returnValueOrRaise",
]
