"""Launchers for the real peers the tests talk to (dcmtk, Orthanc, Redis), each on a free loopback port."""
