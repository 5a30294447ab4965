// ESLint flat config: recommended JS + TypeScript rules; formatting is left to Prettier.
import js from '@eslint/js';
import prettier from 'eslint-config-prettier';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['lib/', 'node_modules/', '**/*.js', '**/*.mjs'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  prettier,
  {
    rules: {
      '@typescript-eslint/no-explicit-any': 'off',
      // `Class.IOptions` namespaces are JupyterLab's own idiom.
      '@typescript-eslint/no-namespace': 'off',
      eqeqeq: 'error',
      curly: 'error'
    }
  }
);
