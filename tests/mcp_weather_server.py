"""A real MCP server for the synthesis tests (the official SDK, over stdio): two tools, and an
error result for a city that does not exist."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

server = MCPServer("weather")


@server.tool()
def get_forecast(city: str, days: int = 3) -> str:
    """The weather forecast for a city, day by day."""
    if city.lower() == "atlantis":
        raise ValueError(f"unknown city {city}")
    return f"{city}: sunny for {days} days"


@server.tool()
def convert_temperature(value: float, unit: str) -> str:
    """Convert a temperature to the other unit ("C" or "F")."""
    return f"{value * 9 / 5 + 32:.1f} F" if unit.upper() == "C" else f"{(value - 32) * 5 / 9:.1f} C"


if __name__ == "__main__":
    server.run("stdio")
