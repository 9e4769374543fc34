// Hardhat 2 project compiled fully offline: the compiler is the npm `solc` package's
// soljson.js, never a download from binaries.soliditylang.org (unreachable here).
const { subtask } = require("hardhat/config");
const { TASK_COMPILE_SOLIDITY_GET_SOLC_BUILD } = require("hardhat/builtin-tasks/task-names");
const path = require("path");

const SOLC_VERSION = "0.8.28"; // must equal package.json's pinned `solc`

subtask(TASK_COMPILE_SOLIDITY_GET_SOLC_BUILD, async (args, hre, runSuper) => {
  const solc = require("solc");
  if (args.solcVersion !== SOLC_VERSION) {
    throw new Error(`only solc ${SOLC_VERSION} is available offline, asked for ${args.solcVersion}`);
  }
  return {
    compilerPath: path.join(path.dirname(require.resolve("solc")), "soljson.js"),
    isSolcJs: true,
    version: args.solcVersion,
    longVersion: solc.version(),
  };
});

/** @type import('hardhat/config').HardhatUserConfig */
module.exports = {
  solidity: {
    version: SOLC_VERSION,
    settings: {
      evmVersion: "cancun", // transient storage for ReentrancyGuardTransient
      optimizer: { enabled: true, runs: 100000 },
      viaIR: false,
    },
  },
  paths: {
    sources: "./contracts",
    artifacts: "./artifacts",
    cache: "./cache/hardhat",
  },
};
