"""A bank account: the classic lost-update example, made safe by one worker per account.

``handlers = ["aqnode.examples.bank"]``
"""

from __future__ import annotations

import asyncio

import msgspec

from aqnode import Command, Context, Query, entity_type, handles


class Balance(msgspec.Struct):
    account_id: str
    balance: int


class InsufficientFunds(Exception):
    """A withdrawal larger than the balance."""


@entity_type("account", id_field="account_id")
class Deposit(Command[Balance]):
    account_id: str
    amount: int


@entity_type("account", id_field="account_id")
class Withdraw(Command[Balance]):
    account_id: str
    amount: int


@entity_type("account", id_field="account_id")
class Transfer(Command[Balance]):
    """Withdraw here, then deposit to ``to_account`` through the bus."""

    account_id: str
    to_account: str
    amount: int


@entity_type("account", id_field="account_id")
class GetBalance(Query[Balance]):
    account_id: str


# Stands in for a database table; a real handler would read and write its own store.
BALANCES: dict[str, int] = {}


async def _read(account_id: str) -> int:
    await asyncio.sleep(0)  # an await between the read and the write, as with a real store
    return BALANCES.get(account_id, 0)


@handles(Deposit)
async def deposit(msg: Deposit, ctx: Context) -> Balance:
    balance = await _read(msg.account_id) + msg.amount
    BALANCES[msg.account_id] = balance
    return Balance(msg.account_id, balance)


@handles(Withdraw)
async def withdraw(msg: Withdraw, ctx: Context) -> Balance:
    balance = await _read(msg.account_id)
    if msg.amount > balance:
        raise InsufficientFunds(f"balance {balance} < {msg.amount}")
    BALANCES[msg.account_id] = balance - msg.amount
    return Balance(msg.account_id, balance - msg.amount)


@handles(Transfer)
async def transfer(msg: Transfer, ctx: Context) -> Balance:
    result = await withdraw(Withdraw(msg.account_id, msg.amount), ctx)
    await ctx.bus.enqueue(Deposit(account_id=msg.to_account, amount=msg.amount))
    return result


@handles(GetBalance)
async def get_balance(msg: GetBalance, ctx: Context) -> Balance:
    return Balance(msg.account_id, await _read(msg.account_id))
