import sys

from qcg.pilotjob.agent.agent import main

sys.exit(main())
