"""`python -m labsupport report|run|learner|env …`: the course's command-line entry points."""
import sys


def main() -> int:
    """Dispatch to the module that does the work."""
    command, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("help", [])
    if command == "report":
        from labsupport.course.runner import main as course  # papermill: the course environment only
        return course(["report", *args])
    if command == "run":
        from labsupport.course.runner import main as course  # papermill: the course environment only
        return course(["run", *args])
    if command == "learner":
        from labsupport.course.homework import main as homework  # nbformat: the course environment only
        return homework(args)
    if command == "env":
        from labsupport.core.envs import main as envs  # runs with a bare python3, before any environment exists
        return envs(args)
    print("usage: python -m labsupport {run|report|learner|env} [options]\n"
          "  run      execute the notebooks headless (make course)\n"
          "  report   print the report card from artifacts/\n"
          "  learner  write the learner editions to artifacts/learner/\n"
          "  env      build the four environments and three kernels (make env)")
    return 0 if command == "help" else 2


if __name__ == "__main__":
    sys.exit(main())
