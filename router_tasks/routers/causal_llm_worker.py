"""Entry point of a launched causal-LLM training worker (`causal_llm_launch.launch_command`).

A module of its own: running `causal_llm_launch` itself with `-m` would import it twice
(once through the routers package, once as `__main__`).
"""

from router_tasks.routers.causal_llm_launch import main

if __name__ == "__main__":
    main()
