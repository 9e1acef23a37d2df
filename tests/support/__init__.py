"""What the tests share: NumPy float64 references written from the papers
(`reference`, `direct_affinity`), the registry of head configurations every
generic test runs (`head_cases`), small real training runs (`training`),
strategies over logical CPUs (`strategies`), and the script that kills runs
at chosen points (`fault_driver`). bench/ and the library never import it.
"""
