"""Packet decoding: capture-file readers, link layers, tunnels, IP defragmentation, TCP/SIP
reassembly. Everything here is pure (no reactor) and hands ``Datagram`` objects to a sink."""
